"""The operator hands kopf's watch stream orjson (operator/__main__.py). If a kopf upgrade
moves the module it patches, this fails rather than the operator silently decoding every
watch event with the slower standard library again."""

from __future__ import annotations

import json

import orjson
from kopf._cogs.clients import api as kopf_api
from rlpost_operator.__main__ import decode_watch_events_with_orjson

# One watch line as the API server sends it (a pod's MODIFIED event, non-ASCII included).
LINE = (
    b'{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"j-'
    b'trainer-0","labels":{"app.kubernetes.io/instance":"j","note":"\\u00e9t\\u00e9"},'
    b'"resourceVersion":"12"},"status":{"phase":"Running","conditions":[{"type":"Ready",'
    b'"status":"True"}],"podIP":null,"ratio":0.5}}}\n'
)


def test_kopf_watch_lines_are_decoded_by_orjson_to_the_same_objects():
    saved = kopf_api.json
    try:
        assert decode_watch_events_with_orjson()
        assert kopf_api.json.loads is orjson.loads
        # what kopf's stream() does with each line
        assert kopf_api.json.loads(LINE.decode("utf-8")) == json.loads(LINE)
    finally:
        kopf_api.json = saved
