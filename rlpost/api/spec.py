"""`RLPostTrainJob.spec`: the model, trainer, rollout, algorithm, data, reward, weight sync,
checkpoint and failure-policy parts, each with its defaults and CEL rules."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from rlpost.api.base import (
    Algorithm,
    EngineKind,
    LossAggregation,
    Mode,
    Model,
    RewardType,
    RouterPolicy,
    TrainerBackend,
    Transport,
    cel,
)

# ---------------------------------------------------------------------------- spec parts

Quantity = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")]
# A custom function by Python path, "pkg.module:function" (rlpost.extension_points).
FunctionPath = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]


class Resources(Model):
    """CPU / memory per pod (GPUs are set by gpusPerPod / gpusPerEngine)."""

    cpu: Quantity = "1"
    memory: Quantity = "4Gi"


class ModelSource(Model):
    """Where weights come from. Nothing is downloaded from a hub by rlpost itself.

    `path` is a Hugging Face model directory (config.json, safetensors weights, sharded or
    not, tokenizer, generation_config.json) inside `pvc` (mounted read-only at /models) in a
    cluster, or a local directory for `rlpost run`; any causal LM transformers supports.
    `config` builds a random-init model instead (tests, toy examples): a dict of config
    fields, `model_type` naming the family (default llama). `tokenizer` is a directory (default:
    `path`) or "char:<alphabet>" (toy character tokenizer). `dtype`: what engines compute in.
    """

    path: str | None = None
    tokenizer: str | None = None
    pvc: str | None = None
    config: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    dtype: Annotated[str, Field(pattern=r"^(float32|bfloat16|float16)$")] = "bfloat16"


class Parallelism(Model):
    tensor: Annotated[int, Field(ge=1, le=64)] = 1
    pipeline: Annotated[int, Field(ge=1, le=64)] = 1


class TrainerSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(self.replicas * self.gpusPerPod) % "
                    "(self.parallelism.tensor * self.parallelism.pipeline) == 0",
                    "trainer.parallelism.tensor * pipeline must divide "
                    "trainer.replicas * gpusPerPod",
                ),
            ]
        }
    )

    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    gpus_per_pod: Annotated[int, Field(ge=0, le=16)] = 8
    parallelism: Parallelism = Parallelism()
    backend: TrainerBackend = TrainerBackend.TORCH
    image: str = "ghcr.io/rlpost/trainer:0.1.0"
    resources: Resources = Resources(cpu="8", memory="64Gi")


class RouterSpec(Model):
    policy: RouterPolicy = RouterPolicy.CACHE_AWARE
    image: str = "ghcr.io/rlpost/rollout:0.1.0"


class AgentBudget(Model):
    """Per-sample budget of a multi-turn `rollout.generate` (docs/CONTRACTS.md, "Custom
    functions"): the buffer's router helper refuses calls beyond it and cuts each call's
    max_new_tokens to what is left; the built-in tool loop (rlpost_rollout.agents) ends a
    sample that spends it."""

    # /generate calls (policy turns) per sample; a resume after a weight update's abort
    # (partialRollouts) is not a turn.
    max_turns: Annotated[int, Field(ge=1, le=1024)] = 16
    # Response tokens per sample, the policy's and injected ones (tool output) together.
    # Unset: maxTurns x rollout.maxNewTokens.
    max_tokens: Annotated[int, Field(ge=1, le=1_048_576)] | None = None


class RolloutSpec(Model):
    engines: Annotated[int, Field(ge=1, le=1024)] = 1
    gpus_per_engine: Annotated[int, Field(ge=0, le=16)] = 1
    engine: EngineKind = EngineKind.SGLANG
    image: str = "ghcr.io/rlpost/rollout:0.1.0"
    sglang_args: list[str] = Field(default_factory=list, max_length=64)
    router: RouterSpec = RouterSpec()
    # 0 = synchronous (every sample comes from the live weights); k > 0 = a sample made with
    # weight version v may train step s only if s - v <= k.
    max_staleness: Annotated[int, Field(ge=0, le=64)] = 0
    max_new_tokens: Annotated[int, Field(ge=1, le=65536)] = 512
    temperature: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    # Stop strings (SGLang's sampling_params.stop); EOS ids come from the model's tokenizer
    # and generation_config.json.
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=16)
    # A custom generate function for one sample (docs/CONTRACTS.md, "Custom functions"):
    # async fn(prompt, prompt_ids, sampling, router); unset: one /generate call per sample.
    generate: FunctionPath | None = None
    agent: AgentBudget = AgentBudget()
    # Groups kept in flight beyond what the next step still needs (slime's over-sampling):
    # with dynamic sampling or a filter dropping groups the batch fills sooner; a step takes
    # the earliest-drawn groups that passed the filters, the rest stay for the next step.
    over_sampling: Annotated[int, Field(ge=0, le=65536)] = 0
    # A request a weight update aborts (pause mode abort: maxStaleness 0) keeps its tokens and
    # is resumed on the new weights (its samples record every version they span) instead of
    # being generated again from the start (docs/DESIGN.md, "Partial rollouts").
    partial_rollouts: bool = False
    resources: Resources = Resources(cpu="8", memory="64Gi")

    def sample_budget(self) -> tuple[int, int]:
        """(max turns, max response tokens) of one sample, defaults filled."""
        tokens = self.agent.max_tokens
        return self.agent.max_turns, tokens or self.agent.max_turns * self.max_new_tokens


DAPO_CLIP_HIGH = 0.28  # the DAPO paper's clip-higher
PPO_GAMMA = 1.0  # undiscounted: one outcome reward per response
PPO_GAE_LAMBDA = 0.95
PPO_ONLY = "algorithm.criticLr, gamma and gaeLambda are ppo's (its value model): set name: ppo"
PPO_MEGATRON = (
    "algorithm.name ppo needs trainer.backend torch: the megatron backend trains no value "
    "model (critic)"
)


class AlgorithmSpec(Model):
    """The RL algorithm (docs/DESIGN.md, "Algorithms"). Unset optional fields take the
    algorithm's own default: clipLow = clip; clipHigh = 0.28 for dapo, else clip;
    lossAggregation = token-mean for dapo, reinforce_pp and ppo, else seq-mean-token-mean;
    ppo: criticLr = lr, gamma = 1, gaeLambda = 0.95."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.name == 'ppo' || "
                    "(!has(self.criticLr) && !has(self.gamma) && !has(self.gaeLambda))",
                    PPO_ONLY,
                ),
            ]
        }
    )

    name: Algorithm = Algorithm.GRPO
    group_size: Annotated[int, Field(ge=2, le=1024)] = 8
    rollout_batch_size: Annotated[int, Field(ge=1, le=65536)] = 64  # prompts per step
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-6
    kl_coef: Annotated[float, Field(ge=0.0)] = 0.0
    clip: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2
    # Decoupled clip range [1 - clipLow, 1 + clipHigh] of the ratio (DAPO's clip-higher).
    clip_low: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    clip_high: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    loss_aggregation: LossAggregation | None = None
    # Overlong shaping (DAPO): a response longer than rollout.maxNewTokens - overlongBuffer
    # loses overlongPenalty * (its excess / overlongBuffer) of reward. Unset: off.
    overlong_buffer: Annotated[int, Field(ge=1, le=65536)] | None = None
    overlong_penalty: Annotated[float, Field(ge=0.0, le=100.0)] = 1.0
    # Truncated importance sampling: each token's loss is weighted by
    # min(pi_trainer / pi_rollout, tisCap), the trainer's policy against the engine's
    # sampling logprobs (staleness, numerics). Unset: off.
    tis_cap: Annotated[float, Field(ge=1.0, le=1000.0)] | None = None
    dynamic_sampling: bool = True  # drop groups whose rewards have zero std, refill
    # A group filter, fn(group) -> keep, or (False, reason): dropped groups are counted under
    # the reason and refilled, like dynamicSampling's zero-std drop (which runs first).
    filter: FunctionPath | None = None
    # -1 flips the advantage sign: a control run that must NOT learn (proves the gradient).
    advantage_sign: Annotated[int, Field(ge=-1, le=1)] = 1
    # ppo only: the value model's learning rate (unset: lr), and GAE's discount (unset: 1,
    # undiscounted) and lambda (unset: 0.95); the reward sits on a response's last token.
    critic_lr: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    gamma: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    gae_lambda: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    def clip_range(self) -> tuple[float, float]:
        """(clip_low, clip_high) with the algorithm's defaults for unset fields."""
        high = self.clip_high
        if high is None:
            high = DAPO_CLIP_HIGH if self.name == Algorithm.DAPO else self.clip
        return (self.clip if self.clip_low is None else self.clip_low), high

    def aggregation(self) -> LossAggregation:
        """loss_aggregation, or the algorithm's default."""
        if self.loss_aggregation is not None:
            return LossAggregation(self.loss_aggregation)
        if self.name in (Algorithm.DAPO, Algorithm.REINFORCE_PP, Algorithm.PPO):
            return LossAggregation.TOKEN_MEAN
        return LossAggregation.SEQ_MEAN_TOKEN_MEAN

    def value_lr(self) -> float:
        """ppo's critic learning rate: criticLr, or lr."""
        return self.lr if self.critic_lr is None else self.critic_lr

    def gae_params(self) -> tuple[float, float]:
        """ppo's (gamma, lambda) with the defaults for unset fields."""
        gamma = PPO_GAMMA if self.gamma is None else self.gamma
        return gamma, PPO_GAE_LAMBDA if self.gae_lambda is None else self.gae_lambda


DATA_NEEDS_INPUT = 'data.prompts (a JSONL file) or data.source ("pkg.module:function") is required'


class DataSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.prompts) || has(self.source)", DATA_NEEDS_INPUT),
            ]
        }
    )

    # JSONL path (in the data PVC, or local). With `source` set it is not read by rlpost: the
    # function gets it (e.g. a file of its own format).
    prompts: Annotated[str, Field(min_length=1)] | None = None
    # A data-source function replacing the JSONL reader, fn(data, seed) -> iterable of rows
    # (docs/CONTRACTS.md, "Custom functions").
    source: FunctionPath | None = None
    pvc: str | None = None
    prompt_key: str = "prompt"
    label_key: str = "label"
    # Rows hold chat messages ([{"role", "content"}, ...]) under this key instead of a
    # prompt string; the buffer applies the tokenizer's chat template (and nothing else does).
    messages_key: str | None = None
    # Plain-text prompts become one user message under the chat template.
    apply_chat_template: bool = False


EVAL_HELD_OUT = (
    "eval.prompts is data.prompts: evaluate on held-out prompts (a file the job does not train on)"
)


class EvalSpec(Model):
    """Held-out evaluation (docs/DESIGN.md, "Evaluation"): after the weight push of every
    `intervalSteps`-th step and of the last one (so a run shorter than the interval is still
    evaluated once, at its end) the buffer runs every row of `prompts` once
    greedily (temperature 0) and `samples` times sampled (seeded) through the router, scored
    with the job's reward: greedy mean reward, pass@k and mean reward over the k samples
    land in that step's steps.jsonl record and the rlpost_eval_reward gauge. Rows are read
    like data.prompts (same keys, chat template, row rejection) and from the same place:
    inside data.pvc in a cluster, relative to the job file in `rlpost run`."""

    prompts: Annotated[str, Field(min_length=1)]
    interval_steps: Annotated[int, Field(ge=1)] = 50
    samples: Annotated[int, Field(ge=1, le=1024)] = 4  # k of pass@k
    temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0  # of the k samples
    max_new_tokens: Annotated[int, Field(ge=1, le=65536)] | None = None  # unset: rollout's


class SandboxSpec(Model):
    """Limits of one code_exec sample (a subprocess: no network, a scratch directory)."""

    cpu_seconds: Annotated[int, Field(ge=1, le=600)] = 5
    memory_mb: Annotated[int, Field(ge=64, le=65536)] = 512
    wall_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    max_processes: Annotated[int, Field(ge=2, le=1024)] = 32


class RewardPoolSpec(Model):
    """Ray workers that run custom and code_exec rewards. 0: in the buffer process.
    In a cluster: a Ray head and `workers` worker pods of `cpusPerWorker` CPUs and `memory`
    each, one podSet of the job's Workload (docs/DESIGN.md, "Rewards")."""

    workers: Annotated[int, Field(ge=0, le=1024)] = 0
    cpus_per_worker: Annotated[float, Field(gt=0, le=256)] = 1.0
    memory: Quantity = "2Gi"
    # Reward tasks in flight at once (0: 2 per worker CPU).
    max_in_flight: Annotated[int, Field(ge=0, le=65536)] = 0
    # Ray re-runs a task whose worker died this many times.
    max_retries: Annotated[int, Field(ge=0, le=100)] = 3
    # The pool pods' image (`ray start`, the reward code); unset: rollout.image.
    image: str | None = None


class RewardSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.type != 'remote' || has(self.url)", "reward.url is required for remote"),
                cel(
                    "self.type != 'custom' || has(self.function)",
                    'reward.function ("pkg.module:function") is required for custom',
                ),
            ]
        }
    )

    type: RewardType = RewardType.EXACT_MATCH
    url: str | None = None
    function: FunctionPath | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    sandbox: SandboxSpec = SandboxSpec()
    pool: RewardPoolSpec = RewardPoolSpec()


class WeightSyncSpec(Model):
    transport: Transport = Transport.AUTO
    # 1 GB: where the measured sync ratio levels off on H200 NVLink (docs/benchmarks-gpu.md);
    # a trainer that copies its buckets holds two of them at a time.
    bucket_mb: Annotated[int, Field(ge=1, le=16384)] = 1024


class CheckpointSpec(Model):
    # A directory inside the state volume in a cluster (a leading '/' is ignored there), a
    # local directory for `rlpost run`.
    path: str | None = None
    # The user's own PVC for checkpoints and buffer samples (mounted at /checkpoints; each
    # job keeps its state in `<path>/<job name>`). Unset: the operator creates the PVC
    # `<job>-state`, owned by the job, from the three fields below.
    pvc: str | None = None
    interval_steps: Annotated[int, Field(ge=1)] = 50
    # StorageClass of `<job>-state` (default: the cluster's default class).
    storage_class_name: str | None = None
    size: Quantity = "10Gi"
    # ReadWriteOnce: the trainer pods and the buffer pod (all that mount it) share a node.
    access_mode: Annotated[
        str, Field(pattern=r"^(ReadWriteOnce|ReadWriteMany|ReadWriteOncePod)$")
    ] = "ReadWriteOnce"
    # A Hugging Face model directory (save_pretrained of the policy + tokenizer) in
    # `<checkpoint dir>/hf/step-<k>` every this many steps; always after the last step.
    hf_interval_steps: Annotated[int, Field(ge=1)] | None = None


class FailurePolicy(Model):
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 3
    # An admitted gang whose pods are not all Ready this long after it was started (pods
    # Pending/Unschedulable: GPU fragmentation, a node gone) gives its quota back: the
    # operator deactivates its Workload and requeues it after a backoff (Kueue's
    # waitForPodsReady, per job). Past podsReadyRequeueLimit such requeues the job Fails.
    pods_ready_timeout_seconds: Annotated[int, Field(ge=5, le=86400)] = 600
    pods_ready_requeue_limit: Annotated[int, Field(ge=0, le=100)] = 5


class RLPostTrainJobSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.mode != 'colocated' || self.rollout.maxStaleness == 0",
                    "colocated mode is synchronous: set rollout.maxStaleness to 0",
                ),
                cel(
                    "self.mode != 'colocated' || self.weightSync.transport in ['auto', 'ipc', "
                    "'disk']",
                    "colocated mode syncs weights in-process: weightSync.transport must be "
                    "auto, ipc or disk",
                ),
                cel(
                    "self.mode != 'disaggregated' || self.weightSync.transport != 'ipc'",
                    "ipc weight sync needs colocated mode; use nccl or auto",
                ),
                cel(
                    "!has(self.algorithm.overlongBuffer) || "
                    "self.algorithm.overlongBuffer < self.rollout.maxNewTokens",
                    "algorithm.overlongBuffer must be less than rollout.maxNewTokens",
                ),
                cel(
                    "self.algorithm.name != 'ppo' || self.trainer.backend != 'megatron'",
                    PPO_MEGATRON,
                ),
                cel(
                    "!has(self.eval) || !has(self.data.prompts) || "
                    "self.eval.prompts != self.data.prompts",
                    EVAL_HELD_OUT,
                ),
            ]
        }
    )

    queue_name: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    priority_class_name: str | None = None
    mode: Mode = Mode.DISAGGREGATED
    suspend: bool = False
    model: ModelSource
    trainer: TrainerSpec = TrainerSpec()
    rollout: RolloutSpec = RolloutSpec()
    algorithm: AlgorithmSpec = AlgorithmSpec()
    data: DataSpec
    eval: EvalSpec | None = None  # absent: no evaluation
    reward: RewardSpec = RewardSpec()
    weight_sync: WeightSyncSpec = WeightSyncSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    steps: Annotated[int, Field(ge=1, le=10_000_000)] = 1000
    seed: int = 0
    failure_policy: FailurePolicy = FailurePolicy()
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
