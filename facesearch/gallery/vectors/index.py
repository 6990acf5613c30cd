"""The FAISS index file: a gallery's vectors keyed by face id, in one self-checking file.

Index kinds (``IndexSettings.kind``):

- ``"flat"``: exact search, ``IndexIDMap2`` over ``IndexFlatIP`` (the default; fine to ~10⁵ faces).
- ``"hnsw"``: graph search, ``IndexIDMap2`` over ``IndexHNSWFlat``. HNSW cannot delete, so removed faces
  become tombstones, filtered out at search time by an ``IDSelector``; the gallery rebuilds the index when
  they pile up (``max_tombstone_ratio``).
- ``"ivf"``: inverted lists (``flat``, ``sq8`` or ``pq`` codes) with their own ids; it needs training, so
  until the gallery has ``min_train`` faces an exact flat index stands in.

``pca_dim`` puts a PCA (trained on the gallery, like IVF) in front of any kind, so 10⁶ faces of 4,096
floats fit in memory. PCA centres the data, which breaks inner-product ranking, so a reduced index uses
L2 distance instead; for unit vectors ``cos = 1 - L2² / 2``, and search returns that similarity either way.

File layout (written to a temp file, then atomically renamed over the old one by the gallery)::

    MAGIC | header length (8 bytes, little endian) | header JSON | live ids | their vector hashes | tombstones
          | faiss index | crc32

The header names the database (``uid``), the ``epoch`` the index reflects and the ``digest`` of the vectors it
holds (the XOR of their hashes: ``digest.py``), which must be the database's for the file to be used; the trailing
crc32 covers everything before it, so a torn or corrupted file is detected and rebuilt from SQL.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any, BinaryIO

import faiss
import numpy as np

from facesearch.errors import BadInput, Unavailable
from facesearch.gallery.digest import combine

logger = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"  # its name in the gallery folder
MAGIC = b"FSINDEX2"
OLD_MAGICS = (b"FSINDEX1",)  # files of an earlier facesearch (no vector hashes): rebuilt from SQL
KINDS = ("flat", "hnsw", "ivf")
IVF_CODECS = ("flat", "sq8", "pq")


class IndexFileError(Unavailable):
    """The index file is missing, torn, corrupted or from another gallery: rebuild it from SQL."""


class EarlierIndexFile(IndexFileError):
    """An index file an earlier facesearch wrote (without vector hashes): rebuilt from SQL once, as a matter of
    course."""


@dataclass(frozen=True)
class IndexSettings:
    """How the FAISS index file is built and searched. Stored in the database with the other store's settings
    (``VectorSettings``: a gallery whose vectors are in pgvector keeps these for a move back); ``gallery rebuild``
    changes them.
    """

    kind: str = "flat"  # "flat" | "hnsw" | "ivf"
    pca_dim: int | None = None  # reduce to this many dimensions first (None: keep the embedding's)
    min_train: int = 2000  # PCA / IVF are trained once the gallery has this many faces; exact flat before
    train_size: int = 50_000  # at most this many faces train PCA / IVF
    # HNSW: measured at 10⁶ faces (docs/BENCHMARKS.md): m 48 / efConstruction 300 / efSearch 768 gives recall@10
    # 0.953 in 4.1 ms per query on 2 cores, where m 32 / 200 needed efSearch 1024 and 5.2 ms for 0.950
    hnsw_m: int = 48  # graph degree: memory ~ 8 * m bytes per face on top of the vectors
    hnsw_ef_construction: int = 300  # build breadth: a better graph, a slower build
    hnsw_ef_search: int = 768  # search breadth: higher is better recall, slower
    ivf_nlist: int | None = None  # None: 4 * sqrt(n) lists
    ivf_nprobe: int = 16  # lists visited per query
    ivf_codec: str = "flat"  # "flat" (exact vectors), "sq8" (1 byte per dim), "pq"
    pq_m: int = 32  # sub-quantizers for "pq" (bytes per face); must divide the (reduced) dimension
    max_tombstone_ratio: float = 0.2  # rebuild an HNSW index when this fraction of it is deleted faces

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadInput(f"index kind must be one of {KINDS}, not {self.kind!r}")
        if self.ivf_codec not in IVF_CODECS:
            raise BadInput(f"ivf codec must be one of {IVF_CODECS}, not {self.ivf_codec!r}")
        if self.pca_dim is not None and self.pca_dim < 1:
            raise BadInput(f"pca_dim must be positive, not {self.pca_dim}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IndexSettings:
        """The FAISS settings among ``d`` (the other store's, stored beside them, are left out)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    def with_search_breadth(self, ef_search: int) -> IndexSettings:
        """These settings with HNSW searching ``ef_search`` candidates."""
        return replace(self, hnsw_ef_search=ef_search)

    def trains_at(self, n_faces: int) -> int | None:
        """The number of faces at which this index is first trained, when a gallery of ``n_faces`` still gets the
        exact flat index that stands in for it (None: it is built as asked)."""
        return self.min_train if self.needs_training() and n_faces < self.min_train else None

    def needs_training(self) -> bool:
        return self.kind == "ivf" or self.pca_dim is not None


class FaceIndex:
    """A FAISS index over L2-normalised embeddings, keyed by face id, with tombstones for HNSW.

    Build with ``FaceIndex.create`` (then ``add``), load with ``FaceIndex.read``. ``epoch`` and ``uid``
    record which database state the index reflects; the gallery compares them with SQL.
    """

    def __init__(self, index: faiss.Index, settings: IndexSettings, dim: int, layout: str, uid: str, epoch: int):
        self.index = index
        self.settings = settings
        self.dim = dim  # embedding dimension (before any PCA)
        self.layout = layout  # what was actually built: "flat", "hnsw", "ivf", "+pca" suffix when reduced
        self.uid = uid
        self.epoch = epoch
        self._ids = np.empty(0, dtype=np.int64)  # live face ids, in insertion order
        self._hashes = np.empty(0, dtype=np.uint64)  # their vector hashes (digest.py), from the database's rows
        self._tombstones = np.empty(0, dtype=np.int64)  # deleted ids still inside an HNSW graph
        self._selector = None  # cached IDSelector excluding the tombstones

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, settings: IndexSettings, dim: int, n_expected: int, train: np.ndarray | None, uid: str = "",
        epoch: int = 0, pca: faiss.PCAMatrix | None = None,
    ) -> FaceIndex:
        """An empty index for about ``n_expected`` faces.

        Args:
            train: (m, dim) float32 sample to train PCA / IVF on; ignored when the settings need none,
                and when ``n_expected < settings.min_train`` (an exact flat index is built instead).
            pca: a PCA already trained (``train_pca``) on ``train`` to reuse.
        """
        trained = settings.needs_training() and n_expected >= settings.min_train and train is not None
        kind = settings.kind if (trained or settings.kind == "hnsw") else "flat"
        reduce = settings.pca_dim is not None and trained and settings.pca_dim < dim
        d = settings.pca_dim if reduce else dim
        metric = faiss.METRIC_L2 if reduce else faiss.METRIC_INNER_PRODUCT
        inner = _inner_index(kind, settings, d, metric, n_expected)
        if reduce:
            inner = faiss.IndexPreTransform(pca if pca is not None else train_pca(train, d), inner)
        index = inner if kind == "ivf" else faiss.IndexIDMap2(inner)
        if not index.is_trained:
            logger.info("training %s index on %d vectors", kind, len(train))
            index.train(np.ascontiguousarray(train, dtype=np.float32))
        codec = f"-{settings.ivf_codec}" if kind == "ivf" and settings.ivf_codec != "flat" else ""
        layout = kind + codec + ("+pca" if reduce else "")
        return cls(index, settings, dim, layout, uid, epoch)

    def add(self, ids: np.ndarray, xb: np.ndarray, hashes: np.ndarray | None = None) -> None:
        """Add (n,) int64 face ids with their (n, dim) float32 unit vectors and (n,) uint64 vector hashes (the
        gallery's rows': digest.py; None: unknown, as for vectors that are no gallery's, and which then match no
        database's digest)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        xb = np.ascontiguousarray(xb, dtype=np.float32).reshape(len(ids), self.dim)
        hashes = np.zeros(len(ids), np.uint64) if hashes is None else \
            np.ascontiguousarray(hashes, dtype=np.uint64).reshape(len(ids))
        if len(ids) == 0:
            return
        self.index.add_with_ids(xb, ids)
        self._ids = np.concatenate([self._ids, ids])
        self._hashes = np.concatenate([self._hashes, hashes])

    def remove(self, ids: np.ndarray) -> None:
        """Forget these face ids (tombstones in HNSW, real removal elsewhere)."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[np.isin(ids, self._ids)]
        if len(ids) == 0:
            return
        if self.family == "hnsw":
            self._tombstones = np.union1d(self._tombstones, ids)
            self._selector = None
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
        keep = ~np.isin(self._ids, ids)
        self._ids, self._hashes = self._ids[keep], self._hashes[keep]

    # -- reading ----------------------------------------------------------------------------------

    @property
    def ids(self) -> np.ndarray:
        """Live face ids (tombstones excluded)."""
        return self._ids

    @property
    def hashes(self) -> np.ndarray:
        """The vector hash of each live face, in the order of ``ids``."""
        return self._hashes

    @property
    def digest(self) -> str:
        """The digest of the vectors held (digest.py): the database's ``vectors_digest`` when they are its own."""
        return combine(self._hashes)

    @property
    def n_tombstones(self) -> int:
        return len(self._tombstones)

    @property
    def family(self) -> str:
        """"flat", "hnsw" or "ivf": what was built (flat stands in for untrained IVF)."""
        return self.layout.split("+")[0].split("-")[0]

    @property
    def reduced(self) -> bool:
        return self.layout.endswith("+pca")

    @property
    def exact(self) -> bool:
        """True when scores are exact cosine similarities (no PCA, no approximation)."""
        return self.layout == "flat"

    def needs_rebuild(self, n_faces: int) -> bool:
        """Whether a fresh build would be materially better: tombstones piled up, or training is now possible."""
        total = len(self._ids) + len(self._tombstones)
        if total and len(self._tombstones) / total > self.settings.max_tombstone_ratio:
            return True
        return self.layout != self.target_layout() and n_faces >= self.settings.min_train

    def target_layout(self) -> str:
        """The layout these settings give once the gallery is large enough to train them."""
        s = self.settings
        codec = f"-{s.ivf_codec}" if s.kind == "ivf" and s.ivf_codec != "flat" else ""
        return s.kind + codec + ("+pca" if s.pca_dim is not None and s.pca_dim < self.dim else "")

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest faces of each query.

        Args:
            xq: (nq, dim) float32 unit vectors.
        Returns:
            S (nq, k) float32 cosine similarities (approximate when reduced), I (nq, k) int64 face ids,
            -1 where fewer than ``k`` faces exist.
        """
        xq = np.ascontiguousarray(xq, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, max(len(self._ids), 1)))
        D, I = self.index.search(xq, k, params=self._params())
        S = 1.0 - D / 2.0 if self.reduced else D  # L2² between unit vectors → cosine
        return S.astype(np.float32), I

    def _params(self):
        kind = self.family
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=self.settings.hnsw_ef_search)
            if len(self._tombstones):
                if self._selector is None:
                    batch = faiss.IDSelectorBatch(self._tombstones)
                    self._selector = (faiss.IDSelectorNot(batch), batch)  # keep both alive: Not borrows batch
                params.sel = self._selector[0]
            return params
        if kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.settings.ivf_nprobe)
        return None

    def memory_bytes(self) -> int:
        """Approximate size in memory: the serialized index plus the id arrays."""
        return _serialized_size(self.index) + 8 * (len(self._ids) + len(self._tombstones))

    # -- files ------------------------------------------------------------------------------------

    def header(self) -> dict[str, Any]:
        return {
            "uid": self.uid, "epoch": self.epoch, "dim": self.dim, "layout": self.layout,
            "settings": self.settings.to_dict(), "n_ids": len(self._ids), "n_tombstones": len(self._tombstones),
            "digest": self.digest,
        }

    def copy(self) -> FaceIndex:
        """An independent copy (what a concurrent gallery changes while other threads search the original)."""
        twin = FaceIndex(faiss.deserialize_index(faiss.serialize_index(self.index)), self.settings, self.dim,
                         self.layout, self.uid, self.epoch)
        twin._ids, twin._hashes, twin._tombstones = self._ids.copy(), self._hashes.copy(), self._tombstones.copy()
        return twin

    def write(self, path: str | os.PathLike) -> None:
        """Write the whole index to ``path`` (the caller renames a temp file into place)."""
        with open(path, "wb") as f:
            out = _CrcWriter(f)
            head = json.dumps(self.header()).encode()
            out.write(MAGIC + struct.pack("<Q", len(head)) + head)
            out.write(self._ids.tobytes())
            out.write(self._hashes.astype("<u8").tobytes())
            out.write(self._tombstones.tobytes())
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(out.write))
            f.write(struct.pack("<I", out.crc))
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def read(cls, path: str | os.PathLike) -> FaceIndex:
        """Load an index file; raises IndexFileError when it is missing, torn or corrupted."""
        try:
            with open(path, "rb") as f:
                inp = _CrcReader(f)
                head = _read_header(inp)
                ids = np.frombuffer(inp.read_exact(8 * head["n_ids"]), dtype=np.int64).copy()
                hashes = np.frombuffer(inp.read_exact(8 * head["n_ids"]), dtype="<u8").astype(np.uint64)
                tombs = np.frombuffer(inp.read_exact(8 * head["n_tombstones"]), dtype=np.int64).copy()
                index = faiss.read_index(faiss.PyCallbackIOReader(inp.read))
                crc = inp.crc
                trailer = f.read(5)
        except EarlierIndexFile as e:
            raise EarlierIndexFile(f"{path}: {e}") from None
        except (OSError, RuntimeError, ValueError, KeyError, struct.error) as e:
            raise IndexFileError(f"{path}: {e}") from e
        if len(trailer) != 4 or struct.unpack("<I", trailer)[0] != crc:
            raise IndexFileError(f"{path}: checksum mismatch (torn or corrupted file)")
        self = cls(index, IndexSettings.from_dict(head["settings"]), head["dim"], head["layout"], head["uid"], head["epoch"])
        self._ids, self._hashes, self._tombstones = ids, hashes, tombs
        if self.digest != head["digest"]:
            raise IndexFileError(f"{path}: its vector hashes do not add up to the digest its header records")
        return self


def read_header(path: str | os.PathLike, any_format: bool = False) -> dict[str, Any]:
    """Only the header of an index file (cheap: tells its uid and epoch without loading vectors); ``any_format``:
    also an earlier facesearch's (whose header names its database's uid the same way)."""
    try:
        with open(path, "rb") as f:
            return _read_header(_CrcReader(f), any_format)
    except EarlierIndexFile as e:
        raise EarlierIndexFile(f"{path}: {e}") from None
    except (OSError, ValueError, KeyError, struct.error) as e:
        raise IndexFileError(f"{path}: {e}") from e


def _read_header(inp: _CrcReader, any_format: bool = False) -> dict[str, Any]:
    magic = inp.read_exact(len(MAGIC))
    if magic in OLD_MAGICS and not any_format:
        raise EarlierIndexFile("an index file of an earlier facesearch (without vector hashes)")
    if magic != MAGIC and magic not in OLD_MAGICS:
        raise ValueError("not a facesearch index file")
    (n,) = struct.unpack("<Q", inp.read_exact(8))
    if n > 1 << 20:
        raise ValueError("header too large")
    return json.loads(inp.read_exact(n))


def train_pca(train: np.ndarray, d_out: int, seed: int = 0) -> faiss.PCAMatrix:
    """A faiss PCAMatrix keeping the top ``d_out`` principal axes of ``train`` (m, d_in).

    faiss's own training eigendecomposes the full d_in x d_in covariance (minutes at 4,096-d on two
    cores) and keeps all of it (64 MB); a randomized SVD (Halko et al. 2011, three power iterations)
    finds the top axes in a fraction of that time, and only they are stored.
    """
    rng = np.random.default_rng(seed)
    x = np.asarray(train, dtype=np.float32)
    mean = x.mean(0)
    xc = x - mean  # (m, d_in)
    Y = xc @ rng.standard_normal((x.shape[1], min(d_out + 64, x.shape[1])), dtype=np.float32)  # (m, k)
    for _ in range(3):
        Y, _ = np.linalg.qr(Y)
        Y = xc @ (xc.T @ Y)
    Q, _ = np.linalg.qr(Y)
    _, s, vt = np.linalg.svd(Q.T @ xc, full_matrices=False)  # vt: (k, d_in), the principal axes
    pca = faiss.PCAMatrix(x.shape[1], d_out)
    faiss.copy_array_to_vector(mean, pca.mean)
    faiss.copy_array_to_vector((s[:d_out] ** 2 / len(x)).astype(np.float32), pca.eigenvalues)
    faiss.copy_array_to_vector(np.ascontiguousarray(vt[:d_out], dtype=np.float32).ravel(), pca.PCAMat)
    pca.prepare_Ab()  # A = the d_out axes, b = -A @ mean
    pca.is_trained = True
    return pca


def _inner_index(kind: str, s: IndexSettings, d: int, metric: int, n_expected: int) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(d) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(d)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, s.hnsw_m, metric)
        index.hnsw.efConstruction = s.hnsw_ef_construction
        index.hnsw.efSearch = s.hnsw_ef_search
        return index
    nlist = s.ivf_nlist or max(1, int(4 * np.sqrt(max(n_expected, 1))))
    quantizer = faiss.IndexFlatIP(d) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(d)
    if s.ivf_codec == "sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, metric)
    elif s.ivf_codec == "pq":
        index = faiss.IndexIVFPQ(quantizer, d, nlist, s.pq_m, 8, metric)
    else:
        index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
    index.nprobe = s.ivf_nprobe
    return index


def _serialized_size(index: faiss.Index) -> int:
    counter = _Counter()
    faiss.write_index(index, faiss.PyCallbackIOWriter(counter.write))
    return counter.n


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def write(self, b: bytes) -> int:
        self.n += len(b)
        return len(b)


class _CrcWriter:
    def __init__(self, f: BinaryIO) -> None:
        self.f, self.crc = f, 0

    def write(self, b: bytes) -> int:
        self.crc = zlib.crc32(b, self.crc)
        return self.f.write(b)


class _CrcReader:
    def __init__(self, f: BinaryIO) -> None:
        self.f, self.crc = f, 0

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        self.crc = zlib.crc32(b, self.crc)
        return b

    def read_exact(self, n: int) -> bytes:
        b = self.read(n)
        if len(b) != n:
            raise ValueError("file ends early")
        return b

