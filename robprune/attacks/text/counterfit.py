"""Counter-fitted word vectors, made here: Mrkšić et al., NAACL 2016, "Counter-fitting Word Vectors to
Linguistic Constraints", applied to the packaged GloVe 6B 50-d table.

TextFooler takes its candidate words from counter-fitted vectors, in which synonyms are close and antonyms
far apart. The authors' vectors are not available offline, so robprune fits its own from the paper's
constraints, shipped in ``data/counter_fitting/`` (PPDB 2.0 synonyms, PPDB and WordNet antonyms, the
paper's vocabulary; Apache-2.0, see NOTICE.md there), and caches the result on disk.

The objective, over unit vectors v' with cosine distance d(u, v) = 1 - cos(u, v) and τ(x) = max(0, x):

    AR  = Σ_{(u,w) antonyms} τ(δ - d(v'_u, v'_w))                  antonym repel
    SA  = Σ_{(u,w) synonyms} τ(d(v'_u, v'_w) - γ)                  synonym attract
    VSP = Σ_i Σ_{j: d(v_i, v_j) <= ρ} τ(d(v'_i, v'_j) - d(v_i, v_j))   vector space preservation
    C   = k1·AR + k2·SA + k3·VSP

minimised as the authors' code does (counterfitting.py, ``one_step_SGD``): full-batch steps; every pair
whose hinge is active (VSP: once the pair is no closer than it was, equality included) adds the gradient
of d to its first word (both orders of each pair are listed); a word moves by the mean of those
contributions; then every row is L2-normalised. Antonym pairs are removed from the synonym and VSP pairs
first. Vectorised here: one gather, one product and one segmented sum per step for all pairs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from robprune.errors import ConfigError, DataError
from robprune.options import Float, Int, check_fields, option

log = logging.getLogger("robprune")

COUNTER_FITTED = "counter-fitted-glove-50d"
CONSTRAINTS = Path(__file__).resolve().parent / "data" / "counter_fitting"
VOCABULARY = "vocabulary.txt"
SYNONYMS = ("ppdb_synonyms.txt",)
ANTONYMS = ("ppdb_antonyms.txt", "wordnet_antonyms.txt")
CACHE_STAGE = "vectors"  # <cache root>/vectors/<key>/: vectors.safetensors, words.json (robprune.store layout)
FORMAT = 1               # of a cache entry; part of the key
BLOCK = 1024             # rows per block of the all-pairs cosine scan (a (BLOCK, V) float32 block at a time)


@dataclass(frozen=True)
class CounterFitting:
    """The hyperparameters of counter-fitting; defaults are the paper's (the authors'
    experiment_parameters.cfg). Checked on construction (ConfigError naming ``counter_fitting.<key>``)."""

    k1: float = option(0.1, Float(0, example="0.1"), help="weight of antonym repel (AR)")
    k2: float = option(0.1, Float(0, example="0.1"), help="weight of synonym attract (SA)")
    k3: float = option(0.1, Float(0, example="0.1"), help="weight of vector space preservation (VSP)")
    delta: float = option(1.0, Float(0, high=2, example="1.0"), help="AR pushes antonyms until their cosine "
                          "distance reaches delta, in [0, 2] (1.0: orthogonal)")
    gamma: float = option(0.0, Float(0, high=2, example="0.0"), help="SA pulls synonyms until their cosine "
                          "distance is at most gamma, in [0, 2]")
    rho: float = option(0.2, Float(0, high=0.5, example="0.2"), help="VSP keeps the distance of every pair "
                        "within cosine distance rho of each other; at most 0.5, as the pair count grows fast "
                        "with it (0.2: 61k pairs over the 72k words of GloVe-50d)")
    steps: int = option(20, Int(1, high=1000, example="20"), help="full-batch steps (the authors' 20)")

    def __post_init__(self):
        check_fields(self, "counter_fitting")


@dataclass(frozen=True)
class Constraints:
    """vocabulary: the words to keep; synonyms, antonyms: word pairs as read (one order each);
    digest: sha256 of the files' bytes (for cache keys)."""

    vocabulary: frozenset[str]
    synonyms: tuple[tuple[str, str], ...]
    antonyms: tuple[tuple[str, str], ...]
    digest: str = field(compare=False)


def read_constraints(folder: str | Path = CONSTRAINTS) -> Constraints:
    """The constraint files of ``folder`` (the packaged ones by default): ``vocabulary.txt``, one word a
    line; synonym and antonym files, one space-separated pair a line. ConfigError naming a missing file,
    DataError naming the file and line of a malformed one."""
    folder = Path(folder)
    texts = _read_files(folder)
    digest = _digest(texts)
    vocabulary = frozenset(_lines(folder / VOCABULARY, texts[VOCABULARY], 1))
    pairs = lambda names: tuple(p for n in names for p in _lines(folder / n, texts[n], 2))  # noqa: E731
    return Constraints(vocabulary, pairs(SYNONYMS), pairs(ANTONYMS), digest)


def constraints_digest(folder: str | Path = CONSTRAINTS) -> str:
    """sha256 of the constraint files' names and bytes (what :attr:`Constraints.digest` holds), unparsed."""
    return _digest(_read_files(Path(folder)))


def _read_files(folder: Path) -> dict[str, bytes]:
    paths = [folder / name for name in (VOCABULARY, *SYNONYMS, *ANTONYMS)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"counter-fitting constraints: {folder} has no {', '.join(missing)}; reinstall robprune, "
                          f"or give a folder with {', '.join(p.name for p in paths)}")
    return {p.name: p.read_bytes() for p in paths}


def _digest(texts: dict[str, bytes]) -> str:
    return hashlib.sha256(b"".join(name.encode() + b"\0" + texts[name] + b"\0" for name in sorted(texts))).hexdigest()


def _lines(path: Path, data: bytes, fields: int) -> list:
    out = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != fields:
            raise DataError(f"{path}:{number}: expected {'one word' if fields == 1 else 'two words'}, got {line.strip()[:60]!r}")
        out.append(parts[0] if fields == 1 else (parts[0], parts[1]))
    return out


def restrict(words: list[str], matrix: np.ndarray, vocabulary: frozenset[str]) -> tuple[list[str], np.ndarray]:
    """The rows of ``matrix`` (V, d; may be memory-mapped) whose word is in ``vocabulary``, in table order,
    first occurrence of a word only: (words, (n, d) float32 copy)."""
    seen: set[str] = set()
    rows = [i for i, w in enumerate(words) if w in vocabulary and not (w in seen or seen.add(w))]
    return [words[i] for i in rows], np.asarray(matrix[rows], dtype=np.float32)


def pair_rows(words: list[str], pairs) -> np.ndarray:
    """(P, 2) int64 row pairs of the word pairs whose words are both in ``words``, both orders, no self
    pairs, each once, sorted."""
    index = {w: i for i, w in enumerate(words)}
    rows = [(index[a], index[b]) for a, b in pairs if a in index and b in index and a != b]
    if not rows:
        return np.zeros((0, 2), dtype=np.int64)
    both = np.asarray(rows, dtype=np.int64)
    return np.unique(np.concatenate([both, both[:, ::-1]]), axis=0)


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero); float32."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def close_pairs(unit: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair (i, j), i != j, of the unit rows with cosine distance <= rho, and that distance:
    ((P, 2) int64 sorted, (P,) float32). One (BLOCK, V - a) matmul per block of rows against the rows at
    and after it; the few hits are found by scanning the comparison 8 bytes at a time."""
    rows, cols, dists = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    cut = np.float32(1.0 - rho)
    for a in range(0, len(unit), BLOCK):
        cos = unit[a:a + BLOCK] @ unit[a:].T          # (b, V - a): rows a.., columns a..
        i, j = np.divmod(_flat_hits(cos >= cut), cos.shape[1])
        upper = j > i                                  # column a + j after row a + i: each pair once
        i, j = i[upper], j[upper]
        rows.append(i + a), cols.append(j + a), dists.append(1.0 - cos[i, j])
    i, j, dist = np.concatenate(rows), np.concatenate(cols), np.concatenate(dists)
    pairs = np.concatenate([np.stack([i, j], 1), np.stack([j, i], 1)]).astype(np.int64)
    dist = np.concatenate([dist, dist]).astype(np.float32)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], dist[order]


def _flat_hits(mask: np.ndarray) -> np.ndarray:
    """Flat indices of the True entries of a C-contiguous bool array: the 8-byte words holding any are
    found first (np.nonzero over bytes is several times slower when hits are rare)."""
    flat = mask.reshape(-1)
    whole = len(flat) // 8 * 8
    words = np.flatnonzero(flat[:whole].view(np.uint64)) if whole else np.zeros(0, np.int64)
    candidates = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    tail = np.arange(whole, len(flat))
    candidates = np.concatenate([candidates, tail])
    return candidates[flat[candidates]]


def counter_fit(vectors: np.ndarray, synonyms: np.ndarray, antonyms: np.ndarray,
                options: CounterFitting = CounterFitting()) -> tuple[np.ndarray, dict]:
    """Counter-fit ``vectors`` (V, d) to row pairs (both orders, as :func:`pair_rows` gives them).

    Returns ((V, d) float32 unit rows, stats: pair counts and seconds). Deterministic: the same inputs
    give the same floats on one machine (BLAS may round differently on another CPU)."""
    started = time.perf_counter()
    unit = normalise(vectors)
    vsp = close_pairs(unit, options.rho)[0] if options.k3 > 0 else np.zeros((0, 2), np.int64)
    synonyms, vsp = _without(synonyms, antonyms, len(unit)), _without(vsp, antonyms, len(unit))
    original = 1.0 - _cos(unit, vsp)  # as each step measures it, so a pair that has not moved is active
    stats = {"words": len(unit), "synonym_pairs": len(synonyms) // 2, "antonym_pairs": len(antonyms) // 2,
             "vsp_pairs": len(vsp) // 2, "vsp_seconds": round(time.perf_counter() - started, 3)}
    pairs = np.concatenate([antonyms, synonyms, vsp]).reshape(-1, 2)
    weight = np.concatenate([np.full(len(antonyms), options.k1), np.full(len(synonyms), -options.k2),
                             np.full(len(vsp), -options.k3)]).astype(np.float32)
    kind = np.repeat(np.arange(3), [len(antonyms), len(synonyms), len(vsp)])
    order = np.argsort(pairs[:, 0], kind="stable")  # group the pairs by the word they move
    pairs, weight, kind = pairs[order], weight[order], kind[order]
    # the hinge's threshold per pair: AR active while d < δ, SA while d > γ, VSP while d >= d(original)
    bound = np.concatenate([np.full(len(antonyms), options.delta), np.full(len(synonyms), options.gamma),
                            original]).astype(np.float32)[order]
    moved, starts = np.unique(pairs[:, 0], return_index=True)
    for _ in range(options.steps if len(pairs) else 0):
        unit = _step(unit, pairs, weight, kind, bound, moved, starts)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return unit, stats


def _step(unit, pairs, weight, kind, bound, moved, starts) -> np.ndarray:
    """One full-batch step (the authors' one_step_SGD): ∂d(u, v)/∂u = u·cos(u, v) - v for unit u, v."""
    u, v = unit[pairs[:, 0]], unit[pairs[:, 1]]
    cos = np.einsum("ij,ij->i", u, v)  # _cos, with u and v kept for the gradient
    dist = 1.0 - cos
    active = np.where(kind == 0, dist < bound, np.where(kind == 1, dist > bound, dist >= bound))
    grad = (u * cos[:, None] - v) * (weight * active)[:, None]
    total = np.add.reduceat(grad, starts, axis=0)
    count = np.add.reduceat(active.astype(np.float32), starts)
    out = unit.copy()
    some = count > 0
    out[moved[some]] += total[some] / count[some, None]
    return normalise(out)


def _cos(unit: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(P,) cosines of the row pairs of unit rows."""
    return np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]])


def _keys(pairs: np.ndarray, n: int) -> np.ndarray:
    return pairs[:, 0] * n + pairs[:, 1]


def _member(pairs: np.ndarray, of: np.ndarray, n: int) -> np.ndarray:
    return np.isin(_keys(pairs, n), _keys(of, n)) if len(pairs) and len(of) else np.zeros(len(pairs), bool)


def _without(pairs: np.ndarray, of: np.ndarray, n: int) -> np.ndarray:
    return pairs[~_member(pairs, of, n)]


# ---- the cached table ----------------------------------------------------------------------------------

def cache_root() -> Path:
    """Where counter-fitted tables are kept: ``$ROBPRUNE_CACHE`` when set (the stage cache's root), else the
    user's cache folder (``$XDG_CACHE_HOME/robprune``, default ``~/.cache/robprune``). The table depends
    only on packaged files, so one build serves every run, folder and process of the machine."""
    if os.environ.get("ROBPRUNE_CACHE"):
        return Path(os.environ["ROBPRUNE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "robprune"


def code_digest() -> str:
    """sha256 of this module's source: a change to the method invalidates every cached table."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def cache_key(words: list[str], matrix: np.ndarray, constraints: Constraints, options: CounterFitting) -> str:
    """24 hex digits over the input table's words and bytes, the constraint files, the options, this
    module's code and the entry format."""
    table = hashlib.sha256("\n".join(words).encode() + b"\0" + np.ascontiguousarray(matrix, np.float32).tobytes())
    blob = json.dumps({"format": FORMAT, "table": table.hexdigest(), "constraints": constraints.digest,
                       "options": asdict(options), "code": code_digest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def counter_fitted(words: list[str], matrix: np.ndarray, *, constraints: Constraints | None = None,
                   options: CounterFitting = CounterFitting(), root: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """The table (words, (V, d) float32) restricted to the constraints' vocabulary and counter-fitted,
    from the cache under ``root`` (default :func:`cache_root`) or built there once (under a lock: a
    second process waits and reuses). A damaged entry fails its manifest check, is moved aside and
    rebuilt (robprune.store); an entry that reads back malformed is a one-line DataError."""
    from robprune.store import StageCache

    constraints = constraints or read_constraints()
    kept, table = restrict(words, matrix, constraints.vocabulary)
    if not kept:
        raise DataError("counter-fitting: no word of the vector table is in the constraints' vocabulary")
    key = cache_key(kept, table, constraints, options)
    root = Path(root).expanduser() if root is not None else cache_root()

    fit = lambda: counter_fit(table, pair_rows(kept, constraints.synonyms), pair_rows(kept, constraints.antonyms), options)  # noqa: E731

    def build(work: Path) -> None:
        from safetensors.numpy import save_file

        fitted, stats = fit()
        save_file({"vectors": fitted}, str(work / "vectors.safetensors"))
        (work / "words.json").write_text(json.dumps(kept, ensure_ascii=False))
        (work / "counterfit.json").write_text(json.dumps({"options": asdict(options), **stats}))
        log.info("counter-fitted %d words in %.1f s (%d synonym, %d antonym, %d VSP pairs)", stats["words"],
                 stats["seconds"], stats["synonym_pairs"], stats["antonym_pairs"], stats["vsp_pairs"])

    meta = {"what": f"{COUNTER_FITTED}: counter-fitted word vectors (robprune.attacks.text.counterfit)",
            "options": asdict(options), "constraints": constraints.digest}
    try:
        entry = StageCache(root, enabled=True, scratch=root).get(CACHE_STAGE, key, build, meta=meta).path
    except OSError as err:  # a read-only or full cache folder: fit for this process, keep nothing
        log.warning("counter-fitted vectors: cannot cache under %s (%s); fitting them for this process only", root, err)
        return kept, fit()[0]
    return read_entry(entry, len(kept), table.shape[1])


def read_entry(entry: Path, n_words: int, dim: int) -> tuple[list[str], np.ndarray]:
    """words.json and vectors.safetensors of a cache entry; DataError (one line naming the folder and the
    fix) unless they hold n_words words and an (n_words, dim) finite float32 table."""
    from safetensors.numpy import load_file

    try:
        words = json.loads((entry / "words.json").read_text(encoding="utf-8"))
        vectors = load_file(str(entry / "vectors.safetensors"))["vectors"]
        ok = (isinstance(words, list) and len(words) == n_words and vectors.shape == (n_words, dim)
              and vectors.dtype == np.float32 and bool(np.isfinite(vectors).all()))
    except Exception as err:  # noqa: BLE001 - any unreadable entry gets the same one-line refusal
        ok, why = False, f"{type(err).__name__}: {err}"
    else:
        why = "wrong shape, type or values"
    if not ok:
        raise DataError(f"cached counter-fitted vectors in {entry} are malformed ({str(why)[:120]}); "
                        f"delete that folder and they are built again")
    return [str(w) for w in words], vectors
