"""One index table's parts, built from one shape: its definition, its reads, its kNN, its writes, its stats."""
from __future__ import annotations

from pixsearch.store.definition import TableDefinition
from pixsearch.store.knn import VectorQueries
from pixsearch.store.queries import TableQueries
from pixsearch.store.schema import IndexSpec
from pixsearch.store.shape import TableShape
from pixsearch.store.stats import TableStats
from pixsearch.store.writes import TableWrites


class Table:
    """The parts of one table. Each takes the connection it runs on; none opens one (IndexStore and RegionTable do)."""

    def __init__(self, shape: TableShape | IndexSpec):
        self._build(shape if isinstance(shape, TableShape) else TableShape(shape))

    def _build(self, shape: TableShape) -> None:
        self.shape = shape
        self.definition = TableDefinition(shape)
        self.queries = TableQueries(shape)
        self.knn = VectorQueries(shape)
        self.writes = TableWrites(shape)
        self.stats = TableStats(shape)

    @property
    def spec(self) -> IndexSpec:
        return self.shape.spec
