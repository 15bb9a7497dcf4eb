"""The baseline users have today: one plain Indexed Job, simulated on the same cluster and workload.

The microtasks are cut up front into `completions = ceil(total / microtasksPerShard)` contiguous
chunks, one per completion index; the Job controller keeps at most `parallelism` pods active and
starts the lowest index waiting. What it cannot do is what Microtask adds:

* retries are per pod: a pod with any failed microtask (or a crash) fails, and the whole chunk
  runs again, up to `retry.maxAttempts` runs per index (backoffLimitPerIndex); after that the
  index fails and its unfinished microtasks count as failed;
* Kubernetes' own pod-failure backoff applies between runs (10 s, doubling, capped at 6 min);
* no fallback (a GPU Job waits for GPUs; an `auto` job is a GPU Job), no speculation, no node
  exclusion (the scheduler keeps feeding a node that fails everything);
* a lost node's pod is noticed when the node is deleted or when the pod is evicted from the
  NotReady node (the default 300 s toleration), and the rerun counts as a failure.

It does not use the core: it is the thing the core is compared against.
"""

from __future__ import annotations

import heapq

from microtask_runner.indexset import IndexSet

from ..core.shardsize import static_shard_size
from ..core.types import Accelerator, CoreSpec, Pool
from .bounds import lower_bound
from .cluster import ClusterSpec
from .engine import START_TIME
from .events import FIRST_OWN_KIND, NODE_DELETED, NODE_LOST, POD_END, EventLoop, Stop
from .result import Policies, SimulationResult
from .world import Execution, Nodes, SimNode, WorkModel

NOT_READY_EVICTION_SECONDS = 300.0  # kube default for node.kubernetes.io/not-ready tolerations
POD_BACKOFF_SECONDS = 10.0
POD_BACKOFF_MAX_SECONDS = 360.0

_POD_END, _NODE_LOST, _NODE_DELETED = POD_END, NODE_LOST, NODE_DELETED
_EVICT, _RETRY = FIRST_OWN_KIND, FIRST_OWN_KIND + 1


class _StaticPod:
    __slots__ = ("execution", "index", "lost_at", "node", "started_at", "token")

    def __init__(self, index: int) -> None:
        self.index = index
        self.node: SimNode | None = None
        self.started_at = 0.0
        self.execution: Execution | None = None
        self.lost_at: float | None = None
        self.token = 0


class StaticSimulation(EventLoop):
    def __init__(self, spec: CoreSpec, cluster: ClusterSpec, *, seed: int = 0) -> None:
        self.spec = spec
        self.cluster = cluster
        self.seed = seed
        super().__init__(START_TIME)
        self.nodes = Nodes(cluster)
        self.work = WorkModel(spec.total, cluster.workload, seed)
        self.pool = Pool.CPU if spec.accelerator is Accelerator.CPU else Pool.GPU
        size = static_shard_size(spec)
        self.chunks = [
            IndexSet.from_range(a, min(a + size, spec.total)) for a in range(0, spec.total, size)
        ]
        self.runs = [0] * len(self.chunks)
        self.waiting: list[int] = list(range(len(self.chunks)))  # a heap: lowest index first
        self.pending: dict[int, _StaticPod] = {}  # unschedulable pods, by pod id, oldest first
        self.pods: dict[int, _StaticPod] = {}  # every active pod (pending or running)
        self.on_node: dict[str, set[int]] = {node.name: set() for node in self.nodes.all}
        self.next_pod = 0
        self.open = len(self.chunks)  # indexes neither succeeded nor failed
        self.succeeded: list[tuple[int, int]] = []
        self.failed: list[tuple[int, int]] = []
        self.wasted = 0.0
        self.busy: dict[str, float] = {pool.value: 0.0 for pool in Pool}
        self.completed = 0

    def run(self) -> SimulationResult:
        self.push_node_losses(self.cluster, self.nodes)
        deadline = self.start + self.cluster.max_simulated_seconds
        message = ""
        self.fill()
        while self.open:
            stop = self.advance(deadline)
            if stop is Stop.NOTHING_LEFT:
                message = f"stuck: {self.open} completion indexes can never run on this cluster"
                break
            if stop is Stop.DEADLINE:
                message = (
                    f"gave up after {self.cluster.max_simulated_seconds:.0f} simulated seconds "
                    f"with {self.open} completion indexes unfinished"
                )
                break
            self.fill()
        return self.result(message)

    def handle(self, kind: int, ref: int, token: int) -> None:
        if kind == _POD_END:
            pod = self.pods.get(ref)
            if pod is not None and pod.token == token:
                self.end(ref, pod)
        elif kind == _EVICT:
            pod = self.pods.get(ref)
            if pod is not None and pod.token == token:
                self.evict(ref, pod)
        elif kind == _NODE_LOST:
            node = self.nodes.all[ref]
            self.nodes.lose(node)
            for pod_id in sorted(self.on_node[node.name]):
                pod = self.pods[pod_id]
                pod.lost_at = self.now
                pod.token += 1
                self.push(self.now + NOT_READY_EVICTION_SECONDS, _EVICT, pod_id, pod.token)
        elif kind == _NODE_DELETED:
            node = self.nodes.all[ref]
            self.nodes.lose(node)
            node.deleted = True
            for pod_id in sorted(self.on_node[node.name]):
                self.evict(pod_id, self.pods[pod_id])
        else:  # _RETRY: the index's backoff is over
            heapq.heappush(self.waiting, ref)

    def fill(self) -> None:
        """The Job controller: keep `parallelism` pods active; the scheduler places them."""
        while self.waiting and len(self.pods) < self.spec.parallelism:
            index = heapq.heappop(self.waiting)
            self.runs[index] += 1
            pod_id = self.next_pod
            self.next_pod += 1
            pod = _StaticPod(index)
            self.pods[pod_id] = pod
            self.pending[pod_id] = pod
        if self.pending and self.nodes.free[self.pool] > 0:
            placed = []
            for pod_id, pod in self.pending.items():
                node = self.nodes.place(self.pool)
                if node is None:
                    break
                self.begin(pod_id, pod, node)
                placed.append(pod_id)
            for pod_id in placed:
                del self.pending[pod_id]

    def begin(self, pod_id: int, pod: _StaticPod, node: SimNode) -> None:
        pod.node = node
        pod.started_at = self.now
        pod.execution = self.work.execute(self.chunks[pod.index], node)
        pod.token += 1
        self.on_node[node.name].add(pod_id)
        self.push(self.now + pod.execution.duration, _POD_END, pod_id, pod.token)

    def end(self, pod_id: int, pod: _StaticPod) -> None:
        execution = pod.execution
        assert execution is not None and pod.node is not None
        self.busy[pod.node.pool.value] += self.now - pod.started_at
        self.nodes.release(pod.node)
        self.on_node[pod.node.name].discard(pod_id)
        del self.pods[pod_id]
        report = execution.report
        self.completed += len(report.succeeded)
        if execution.exit_code == 0:
            self.succeeded.extend(self.chunks[pod.index].ranges)
            self.open -= 1
            return
        if self.retry(pod.index):
            # The chunk runs again from the start: what succeeded in this run is redone.
            self.wasted += self.work.size_of(report.succeeded) * execution.seconds_per_size
        else:
            self.succeeded.extend(report.succeeded.ranges)
            self.failed.extend((self.chunks[pod.index] - report.succeeded).ranges)

    def evict(self, pod_id: int, pod: _StaticPod) -> None:
        """The pod of a lost node is gone: a failed run, rerun if the index has runs left."""
        node = pod.node
        assert node is not None
        ran = max(0.0, (pod.lost_at if pod.lost_at is not None else self.now) - pod.started_at)
        self.busy[node.pool.value] += ran
        self.wasted += ran
        if node.deleted:
            node.used -= 1
        else:
            self.nodes.release(node)
        self.on_node[node.name].discard(pod_id)
        pod.token += 1
        del self.pods[pod_id]
        if not self.retry(pod.index):
            self.failed.extend(self.chunks[pod.index].ranges)

    def retry(self, index: int) -> bool:
        """Queue another run of `index` after the pod backoff; False when its runs are used up."""
        if self.runs[index] >= self.spec.retry.max_attempts:
            self.open -= 1
            return False
        delay = min(POD_BACKOFF_SECONDS * 2 ** (self.runs[index] - 1), POD_BACKOFF_MAX_SECONDS)
        self.push(self.now + delay, _RETRY, index)
        return True

    def result(self, message: str) -> SimulationResult:
        succeeded = IndexSet.from_ranges(self.succeeded)
        failed = IndexSet.from_ranges(self.failed) - succeeded
        finished = self.open == 0
        if not finished:
            phase = "Running"
        elif len(failed) > self.spec.retry.max_failed_microtasks:
            phase = "Failed"
        else:
            phase = "Succeeded"
        attempts = sum(
            runs * len(chunk) for runs, chunk in zip(self.runs, self.chunks, strict=True)
        )
        bound = lower_bound(self.spec, self.cluster, self.work.total_size(), self.work.max_size())
        return SimulationResult(
            mode="static",
            cluster=self.cluster.name,
            seed=self.seed,
            total=self.spec.total,
            policies=Policies(fallback=False, speculation=False, exclusion=False),
            phase=phase,
            finished=finished,
            makespan=self.now - self.start,
            lower_bound=bound,
            succeeded=succeeded,
            failed=failed,
            attempts=attempts,
            executions=attempts,
            wasted_seconds=self.wasted,
            busy_seconds=self.busy,
            completed_by_pool={self.pool.value: self.completed},
            shards=self.next_pod,
            message=message,
        )


def simulate_static(spec: CoreSpec, cluster: ClusterSpec, *, seed: int = 0) -> SimulationResult:
    """Run `spec` as one plain Indexed Job on `cluster` (the baseline)."""
    return StaticSimulation(spec, cluster, seed=seed).run()
