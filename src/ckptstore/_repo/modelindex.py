"""The index's model facts (table ``model_facts``) and the ``ls --where`` query they serve.

Added to the index without changing its schema version: an index written before this table existed gets it when
next opened, empty, and :func:`backfill` fills the rows it lacks from the manifests on the next sync, as a rebuilt
index (``ckpt fsck --reindex``) fills them through :meth:`Catalog.add_many`. A version of ckptstore that does not
know the table leaves it alone; rows of checkpoints it deleted are never read (queries join on ``checkpoints``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .._core.query import Condition
from .._format.manifest import Manifest
from .._format.modelfacts import index_facts
from ..errors import CkptError

if TYPE_CHECKING:
    from .catalog import Catalog
    from .repository import Repository

SCHEMA = """
-- Model facts of each checkpoint (_repo/modelindex.py): what ls --where filters on besides metrics and tags.
CREATE TABLE IF NOT EXISTS model_facts (
    id TEXT PRIMARY KEY, model_type TEXT, architectures TEXT NOT NULL, parameters INTEGER, dtypes TEXT NOT NULL
);
"""


def fill(db: sqlite3.Connection, items: Iterable[tuple[str, Manifest]]) -> None:
    """Index the facts of `items` (id, manifest); the caller holds the transaction."""
    rows = []
    for cid, manifest in items:
        facts = index_facts(manifest)
        rows.append((cid, facts["model_type"], json.dumps(facts["architectures"]), facts["parameters"],
                     json.dumps(facts["dtypes"])))
    db.executemany("INSERT OR REPLACE INTO model_facts (id, model_type, architectures, parameters, dtypes)"
                   " VALUES (?,?,?,?,?)", rows)


def backfill(repo: "Repository", catalog: "Catalog") -> None:
    """Fill the facts of indexed checkpoints that have none (an index from before this table, or rows another
    version of ckptstore added), reading their manifests."""
    missing = [r[0] for r in catalog.db.execute(
        "SELECT id FROM checkpoints WHERE id NOT IN (SELECT id FROM model_facts)")]
    found = []
    for cid in missing:
        try:
            found.append((cid, repo.read_manifest(cid)))
        except CkptError:
            continue  # gone or damaged since it was indexed: the next sync drops it, verify names it
    if found:
        with catalog._tx():
            fill(catalog.db, found)


def metric_names(db: sqlite3.Connection) -> list[str]:
    """Every metric some checkpoint records, saved or annotated."""
    rows = db.execute(
        "SELECT DISTINCT key FROM checkpoints, json_each(checkpoints.metrics)"
        " UNION SELECT DISTINCT key FROM annotations, json_each(annotations.metrics)"
        " WHERE annotations.id IN (SELECT id FROM checkpoints) ORDER BY 1").fetchall()
    return [r[0] for r in rows]


_NUMBER_COLUMNS = {"parameters": "f.parameters", "step": "c.step", "size": "c.logical_bytes"}
_TEXT_COLUMNS = {"model_type": "f.model_type", "name": "c.name", "run": "c.run"}
# An annotated metric overrides the saved one (as Catalog.infos merges them).
_METRIC = ("coalesce((SELECT value FROM annotations a, json_each(a.metrics) WHERE a.id = c.id AND key = ?),"
           " (SELECT value FROM json_each(c.metrics) WHERE key = ?))")


def _text_match(column: str, op: str) -> str:
    """SQL true when `column` matches the parameter by `op` (= or ~); != is built by negating = at the caller."""
    return f"instr(lower({column}), lower(?)) > 0" if op == "~" else f"{column} = ?"


def _clause(cond: Condition) -> tuple[str, list]:
    op, value = cond.op, cond.value
    if cond.key in _NUMBER_COLUMNS or cond.is_metric:
        if cond.is_metric:
            # typeof keeps a metric stored as text out (ckptstore never writes one, but a JSON document may hold it).
            return f"(SELECT typeof(v) IN ('integer', 'real') AND v {op} ? FROM (SELECT {_METRIC} AS v))", [
                value, cond.key, cond.key]  # in the order the placeholders appear
        return f"{_NUMBER_COLUMNS[cond.key]} {op} ?", [value]
    positive = "~" if op == "~" else "="
    if cond.key in _TEXT_COLUMNS:
        sql = f"coalesce({_text_match(_TEXT_COLUMNS[cond.key], positive)}, 0)"
    elif cond.key == "architecture":
        sql = f"EXISTS (SELECT 1 FROM json_each(f.architectures) WHERE {_text_match('value', positive)})"
    elif cond.key == "dtype":
        sql = "EXISTS (SELECT 1 FROM json_each(f.dtypes) WHERE key = ?)"
    else:  # tag: TAG or RUN:TAG
        tag = _text_match("t.tag", positive)
        full = _text_match("t.run || ':' || t.tag", positive)
        sql = f"EXISTS (SELECT 1 FROM tags t WHERE t.id = c.id AND ({tag} OR {full}))"
        return ("NOT " if op == "!=" else "") + sql, [value, value]
    return ("NOT " if op == "!=" else "") + sql, [value]


def query(db: sqlite3.Connection, conditions: Sequence[Condition], run: str | None = None) -> list[str]:
    """Ids of the checkpoints that meet every condition (of `run`, when given)."""
    clauses, args = [], []
    if run is not None:
        clauses.append("c.run = ?")
        args.append(run)
    for cond in conditions:
        sql, params = _clause(cond)
        clauses.append(f"({sql})")
        args += params
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    sql = f"SELECT c.id FROM checkpoints c LEFT JOIN model_facts f ON f.id = c.id{where}"
    return [r[0] for r in db.execute(sql, args)]
