"""A small, declarative table contract: columns with Arrow types and checks.

Every table offclip writes (records, manifests) is declared once as a :class:`Contract`. The
contract gives the Arrow schema the table is written with and validates a pandas frame or Arrow
table before any write; a violation raises :class:`ContractViolation` naming the table, the
column, the rule and the first offending rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa


class ContractViolation(ValueError):
    """A table broke its contract; nothing was written."""

    def __init__(self, table: str, column: str, rule: str, rows: Sequence[int], sample: Sequence):
        self.table, self.column, self.rule, self.rows = table, column, rule, list(rows)
        shown = ", ".join(f"row {r}: {v!r}" for r, v in list(zip(rows, sample))[:5])
        more = f" (+{len(rows) - 5} more)" if len(rows) > 5 else ""
        super().__init__(f"{table}.{column} violates '{rule}' in {len(rows)} row(s): {shown}{more}")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool = False
    isin: tuple | None = None  #: allowed values
    pattern: str | None = None  #: full-match regex for strings
    min: float | None = None
    max: float | None = None
    unique: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Contract:
    name: str
    columns: tuple[Column, ...]
    doc: str = ""
    #: column sets that must be unique together (a primary key)
    keys: tuple[tuple[str, ...], ...] = field(default=())

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def empty(self) -> pd.DataFrame:
        return self.schema.empty_table().to_pandas()

    def validate(self, data: pd.DataFrame | pa.Table) -> pa.Table:
        """Check ``data`` and return it as an Arrow table with exactly this contract's schema."""
        df = data.to_pandas() if isinstance(data, pa.Table) else data
        missing = [c for c in self.names if c not in df.columns]
        if missing:
            raise ContractViolation(self.name, ",".join(missing), "column present", [], [])
        extra = [c for c in df.columns if c not in self.names]
        if extra:
            raise ContractViolation(self.name, ",".join(map(str, extra)), "no undeclared columns", [], [])
        for col in self.columns:
            self._check(col, df[col.name])
        for key in self.keys:
            dup = df.duplicated(list(key), keep="first").to_numpy()
            self._fail_if(col_name=",".join(key), rule="unique key", mask=dup, values=df.loc[dup, list(key)].values.tolist())
        try:
            return pa.Table.from_pandas(df[self.names], schema=self.schema, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ContractViolation(self.name, "?", f"arrow type: {exc}", [], []) from exc

    def _check(self, col: Column, s: pd.Series) -> None:
        nulls = s.isna().to_numpy()
        if not col.nullable:
            self._fail_if(col.name, "not null", nulls, s[nulls].tolist())
        present = s[~nulls]
        if col.isin is not None:
            bad = ~present.isin(col.isin).to_numpy()
            self._fail_if(col.name, f"in {list(col.isin)}", bad, present[bad].tolist(), present.index[bad])
        if col.pattern is not None:
            rx = re.compile(col.pattern)
            bad = np.array([rx.fullmatch(str(v)) is None for v in present], dtype=bool)
            self._fail_if(col.name, f"matches {col.pattern}", bad, present[bad].tolist(), present.index[bad])
        if col.min is not None:
            bad = (present < col.min).to_numpy()
            self._fail_if(col.name, f">= {col.min}", bad, present[bad].tolist(), present.index[bad])
        if col.max is not None:
            bad = (present > col.max).to_numpy()
            self._fail_if(col.name, f"<= {col.max}", bad, present[bad].tolist(), present.index[bad])
        if col.unique:
            bad = present.duplicated().to_numpy()
            self._fail_if(col.name, "unique", bad, present[bad].tolist(), present.index[bad])

    def _fail_if(self, col_name: str, rule: str, mask: np.ndarray, values: list, index: Iterable | None = None) -> None:
        if mask.any():
            rows = list(index) if index is not None else list(np.flatnonzero(mask))
            raise ContractViolation(self.name, col_name, rule, rows, values)


def frame(contract: Contract, records: Iterable[dict]) -> pd.DataFrame:
    """Records (dicts) as a frame with the contract's columns, in its order."""
    rows = list(records)
    if not rows:
        return contract.empty()
    df = pd.DataFrame.from_records(rows)
    for name in contract.names:
        if name not in df.columns:
            df[name] = None
    return df[contract.names]
