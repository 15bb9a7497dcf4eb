"""The simulated clock and its event queue, shared by the core-driven and the static simulation.

Events are (time, sequence, kind, ref, token) in a heap; the sequence number keeps equal times in
push order, so runs are deterministic. Kinds 0-2 are common to both simulations; each adds its own
from FIRST_OWN_KIND on.
"""

from __future__ import annotations

import heapq
from enum import Enum

from .cluster import ClusterSpec
from .world import Nodes

POD_END, NODE_LOST, NODE_DELETED = range(3)
FIRST_OWN_KIND = 3


class Stop(Enum):
    """Why the clock cannot advance."""

    NOTHING_LEFT = "nothing left to happen"
    DEADLINE = "past the simulated time limit"


class EventLoop:
    """A simulated clock: subclasses handle events and decide what happens between instants."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.now = start
        self.heap: list[tuple[float, int, int, int, int]] = []
        self.seq = 0

    def push(self, at: float, kind: int, ref: int = 0, token: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, ref, token))

    def handle(self, kind: int, ref: int, token: int) -> None:
        raise NotImplementedError

    def push_node_losses(self, cluster: ClusterSpec, nodes: Nodes) -> None:
        """Schedule the cluster file's node losses, and handle those at time 0 at once.

        Nodes lost "at 0" are gone before the first decision, not after its pods are placed.
        """
        for loss in cluster.node_losses:
            node = nodes.by_name[loss.node]
            self.push(self.start + loss.at, NODE_LOST, node.order)
            if loss.deleted_after is not None:
                self.push(self.start + loss.at + loss.deleted_after, NODE_DELETED, node.order)
        self.handle_through(self.start)

    def handle_through(self, at: float) -> None:
        while self.heap and self.heap[0][0] <= at:
            _, _, kind, ref, token = heapq.heappop(self.heap)
            self.handle(kind, ref, token)

    def advance(self, deadline: float) -> Stop | None:
        """Move the clock to the next instant and handle all its events, or say why not."""
        if not self.heap:
            return Stop.NOTHING_LEFT
        at = self.heap[0][0]
        if at > deadline:
            return Stop.DEADLINE
        self.now = at
        self.handle_through(at)
        return None
