"""A small, declarative table contract: columns with Arrow types and checks.

Every table offclip writes (records, manifests) and every JSON record it writes (shard samples,
shard completion records) is declared once as a :class:`Contract`. The contract gives the Arrow
schema the table is written with and validates a pandas frame or Arrow table before any write; a
violation raises :class:`ContractViolation` naming the table, the column, the rule and the first
offending rows. A JSON record's Python class is made from its contract (:meth:`Contract.record_class`).

Why not pandera (which does the checks too): on the 2 M-row curated sentences table it took 1.84x
this module's time to validate (2.13x the checks alone), 2.06x with the Arrow conversion a write
needs, and it gives no Arrow schema, so every table would be declared twice
(``benchmarks/bench_contracts.py``; BENCHMARKS.md, "Table contracts").
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa


class ContractViolation(ValueError):
    """A table broke its contract; nothing was written."""

    def __init__(
        self, table: str, column: str, rule: str, rows: Sequence[Hashable], sample: Sequence, detail: str = ""
    ):  # rows: the frame's index labels (positions for a default index)
        self.table, self.column, self.rule, self.rows = table, column, rule, list(rows)
        shown = ", ".join(f"row {r}: {v!r}" for r, v in list(zip(rows, sample))[:5])
        more = f" (+{len(rows) - 5} more)" if len(rows) > 5 else ""
        detail = f" ({detail})" if detail else ""
        super().__init__(f"{table}.{column} violates '{rule}' in {len(rows)} row(s): {shown}{more}{detail}")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: :attr:`Column.default` of a JSON record field that must be present
REQUIRED = _Required()


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
    #: a JSON record's value when the field is absent (records written before it existed);
    #: a callable makes a fresh one (``list``). Only :meth:`Contract.record_class` reads it.
    default: object = REQUIRED


def _python_type(t: pa.DataType) -> type:
    for test, py in (
        (pa.types.is_boolean, bool),
        (pa.types.is_integer, int),
        (pa.types.is_floating, float),
        (pa.types.is_string, str),
        (pa.types.is_list, list),
        (pa.types.is_struct, dict),
    ):
        if test(t):
            return py
    return object


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

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def pick(self, *names: str) -> tuple[Column, ...]:
        """The named columns, in the order given (to declare a table from another's columns)."""
        return tuple(self.column(n) for n in names)

    def record_class(self, name: str) -> type:
        """A dataclass with one field per column, in order (the Python form of a JSON record:
        ``cls(**json.loads(text))``, ``json.dumps(record.__dict__)``). Subclass it for methods."""
        fields: list[tuple[str, type] | tuple[str, type, Any]] = []
        for c in self.columns:
            if c.default is REQUIRED:
                fields.append((c.name, _python_type(c.type)))
            elif callable(c.default):
                fields.append((c.name, _python_type(c.type), field(default_factory=c.default)))
            else:
                fields.append((c.name, _python_type(c.type), field(default=c.default)))
        return dataclasses.make_dataclass(name, fields)

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
            self._fail_if(
                col_name=",".join(key), rule="unique key", mask=dup, values=df.loc[dup, list(key)].values.tolist()
            )
        try:
            return pa.Table.from_pandas(df[self.names], schema=self.schema, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            self._type_violation(df, exc)
            raise ContractViolation(self.name, "?", "arrow type", [], [], detail=str(exc)) from exc

    def _type_violation(self, df: pd.DataFrame, exc: Exception) -> None:
        """Raise a violation of rule ``type <arrow type>`` naming the column and its first rows
        that do not convert (only on the error path: the column first, then its values)."""
        for col in self.columns:
            s = df[col.name]
            try:
                pa.array(s, type=col.type, from_pandas=True)
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as col_exc:
                detail = f"{s.dtype} column; {col_exc}"
            rows, values = [], []
            for start in range(0, len(s), 65536):  # chunks, then values: a few bad rows in a large column
                chunk = s.iloc[start : start + 65536]
                try:
                    pa.array(chunk, type=col.type, from_pandas=True)
                    continue
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                    pass
                for label, v in chunk.items():
                    try:
                        pa.array(pd.Series([v], dtype=s.dtype), type=col.type, from_pandas=True)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                        rows.append(label)
                        values.append(v)
            raise ContractViolation(self.name, col.name, f"type {col.type}", rows, values, detail=detail) from exc

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
