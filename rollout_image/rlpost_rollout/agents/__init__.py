"""Built-in multi-turn agent rollouts for `rollout.generate` (docs/CONTRACTS.md, "Tool calls").

`tool_loop.run` is the loop (policy turn, tool call, injected tool output, policy turn...);
`lookup:generate` is the example task's agent (examples/hidden-lookup.yaml).
"""
