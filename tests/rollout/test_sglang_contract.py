"""Our engine and our clients against the pinned SGLang wheel, read with `ast` (no import).

- every path the reference engine serves exists in SGLang with the same methods (except the
  declared rlpost extensions, which must really be absent from SGLang);
- every request model of the engine, and every JSON body our clients send (the buffer's
  /generate payload, the trainer's weight-sync payloads) uses only field names of the SGLang
  request class that SGLang's handler for that path parses, and gives its required fields.
"""

from __future__ import annotations

import ast
import inspect
import zipfile

import pytest
import torch
from rlpost_rollout import protocol
from rlpost_rollout.engine import RLPOST_EXTENSIONS, Engine, create_app

from rlpost.weightsync import payloads as P
from tests.rollout.procs import write_job, write_prompts
from tests.rollout.sglang_wheel import sglang_wheel

SRT = "sglang/srt"


@pytest.fixture(scope="module")
def sglang():
    with zipfile.ZipFile(sglang_wheel()) as z:
        files = {
            name: z.read(f"{SRT}/{name}").decode()
            for name in (
                "entrypoints/http_server.py",
                "entrypoints/v1_loads.py",
                "managers/io_struct.py",
                "sampling/sampling_params.py",
                "utils/common.py",
            )
        }
    return SGLang(files)


class SGLang:
    def __init__(self, files: dict[str, str]):
        self.routes: dict[str, set[str]] = {}
        self.handler_class: dict[str, str] = {}
        for name in ("entrypoints/http_server.py", "entrypoints/v1_loads.py"):
            self._routes(ast.parse(files[name]))
        # /metrics is mounted (prometheus ASGI app) when --enable-metrics is on.
        assert 'Mount("/metrics"' in files["utils/common.py"]
        self.routes.setdefault("/metrics", set()).add("GET")
        self.classes = self._classes(ast.parse(files["managers/io_struct.py"]))
        self.classes.update(self._classes(ast.parse(files["sampling/sampling_params.py"])))

    def _routes(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if not isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                if not (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute)):
                    continue
                kind = dec.func.attr
                if kind not in ("get", "post", "put", "delete", "api_route"):
                    continue
                if not (dec.args and isinstance(dec.args[0], ast.Constant)):
                    continue  # env-configurable paths (ollama, vertex): not ours
                path = dec.args[0].value
                if kind == "api_route":
                    kw = {k.arg: k.value for k in dec.keywords}
                    methods = {m.value for m in kw["methods"].elts} if "methods" in kw else {"GET"}
                else:
                    methods = {kind.upper()}
                self.routes.setdefault(path, set()).update(methods)
                for arg in node.args.args:
                    if arg.arg == "obj" and arg.annotation is not None:
                        self.handler_class[path] = _class_name(arg.annotation)

    @staticmethod
    def _classes(tree: ast.Module) -> dict[str, dict[str, bool]]:
        """class -> {field: required}, with BaseReq's fields for its subclasses."""
        raw = {}
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                fields = {
                    s.target.id: s.value is None
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                }
                raw[node.name] = ([ast.unparse(b) for b in node.bases], fields)

        def resolve(name: str) -> dict[str, bool]:
            bases, fields = raw[name]
            out: dict[str, bool] = {}
            for b in bases:
                if b in raw:
                    out.update(resolve(b))
            out.update(fields)
            return out

        return {name: resolve(name) for name in raw}

    def fields_for(self, path: str) -> dict[str, bool]:
        assert path in self.handler_class, f"SGLang has no request class for {path}"
        return self.classes[self.handler_class[path]]


def _class_name(annotation: ast.expr) -> str:
    # `obj: X`, `obj: Annotated[X, Body()]` or `obj: Optional[X]`
    if isinstance(annotation, ast.Subscript):
        inner = annotation.slice
        return _class_name(inner.elts[0] if isinstance(inner, ast.Tuple) else inner)
    return ast.unparse(annotation)


@pytest.fixture(scope="module")
def engine_routes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contract")
    from rlpost_rollout.config import load_job

    torch.set_num_threads(1)
    job = load_job(str(write_job(tmp, write_prompts(tmp / "p.jsonl"))))
    app = create_app(Engine(job), token="t")
    routes: dict[str, set[str]] = {}
    for r in app.routes:
        methods = getattr(r, "methods", None)
        if methods and not r.path.startswith(("/docs", "/openapi", "/redoc")):
            routes.setdefault(r.path, set()).update(methods - {"HEAD", "OPTIONS"})
    return routes


def test_every_engine_path_is_sglangs_with_the_same_methods(sglang, engine_routes):
    extensions = {path for _, path in RLPOST_EXTENSIONS}
    for path, methods in engine_routes.items():
        if path in extensions:
            assert path not in sglang.routes, f"{path} is SGLang's now: drop it from extensions"
            continue
        assert path in sglang.routes, f"engine serves {path}, SGLang does not"
        assert methods == sglang.routes[path], (path, methods, sglang.routes[path])
    rl_paths = {
        "/generate", "/health", "/health_generate", "/flush_cache", "/server_info",
        "/get_model_info", "/model_info", "/init_weights_update_group",
        "/destroy_weights_update_group", "/update_weights_from_distributed",
        "/update_weights_from_tensor", "/update_weights_from_disk", "/release_memory_occupation",
        "/resume_memory_occupation", "/pause_generation", "/continue_generation",
        "/abort_request", "/v1/chat/completions", "/v1/loads", "/metrics",
    }  # fmt: skip
    assert rl_paths <= set(engine_routes), rl_paths - set(engine_routes)


def check_body(sglang_fields: dict[str, bool], body: dict, what: str) -> None:
    unknown = set(body) - set(sglang_fields)
    assert not unknown, f"{what}: not SGLang fields: {sorted(unknown)}"
    missing = {f for f, required in sglang_fields.items() if required} - set(body)
    missing -= {"rid", "http_worker_ipc"}  # BaseReq internals, optional on the wire
    assert not missing, f"{what}: SGLang requires {sorted(missing)}"


def test_engine_request_models_use_sglang_field_names(sglang):
    for path, model in protocol.CONTROL_MODELS.items():
        theirs = set(sglang.fields_for(path))
        ours = set(model.model_fields)
        assert ours <= theirs, f"{path}: {sorted(ours - theirs)} are not fields of SGLang's"
    gen = sglang.fields_for("/generate")
    assert set(protocol.GenerateReqInput.model_fields) <= set(gen)
    assert set(protocol.SamplingParams.model_fields) <= set(sglang.classes["SamplingParams"])


def test_the_buffers_generate_payload_is_sglangs(sglang):
    body = protocol.generate_payload(
        [1, 2, 3],
        max_new_tokens=4,
        temperature=1.0,
        top_p=0.9,
        top_k=5,
        stop=["x"],
        rid="r",
        sampling_seed=7,
    )
    assert body["sampling_params"]["sampling_seed"] == 7
    check_body(sglang.fields_for("/generate"), body, "buffer /generate")
    sampling = sglang.classes["SamplingParams"]
    assert set(body["sampling_params"]) <= set(sampling), set(body["sampling_params"]) - set(
        sampling
    )
    # The driver really sends this builder's output (not a hand-typed copy).
    from rlpost_rollout.buffer import driver

    assert "generate_payload(" in inspect.getsource(driver.Driver._generate)


def test_the_trainers_weight_sync_payloads_are_sglangs(sglang):
    bucket = [("model.embed_tokens.weight", torch.zeros(3, 2))]
    cases = [
        (P.PATH_INIT_GROUP, P.init_group_payload("127.0.0.1", 1234, 1, 2, "g", "gloo")),
        (P.PATH_DESTROY_GROUP, P.destroy_group_payload("g")),
        (P.PATH_UPDATE_DISTRIBUTED, P.update_distributed_payload(bucket, "3", "g")),
        (P.PATH_UPDATE_TENSOR, P.update_tensor_payload(["b64"], "3")),
        (P.PATH_PAUSE, P.pause_payload()),
        (P.PATH_CONTINUE, P.continue_payload()),
    ]
    for path, body in cases:
        assert "POST" in sglang.routes.get(path, set()), f"SGLang has no POST {path}"
        check_body(sglang.fields_for(path), body, f"trainer {path}")
    # The HTTP body carries dtype names SGLang's loader understands.
    assert P.update_distributed_payload(bucket, "3")["dtypes"] == ["float32"]


def test_the_colocated_memory_payloads_are_sglangs(sglang):
    from rlpost.weightsync.colocated import PATH_RELEASE, PATH_RESUME, memory_payload

    for path in (PATH_RELEASE, PATH_RESUME):
        assert "POST" in sglang.routes.get(path, set()), f"SGLang has no POST {path}"
        for body in (memory_payload(), memory_payload(["weights", "kv_cache"])):
            check_body(sglang.fields_for(path), body, f"trainer {path}")
