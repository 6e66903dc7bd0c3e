"""The RetriKT student: a tiny encoder that retrieves teacher-labelled samples from the store at inference.

Mechanism (after ReAugKD, ACL 2023): the student's pooled embedding is projected into the store's key space; training
combines cross-entropy on gold labels, KL to the teacher's soft labels on store entries, and a relational loss that
makes the student's similarity distribution over an example's store neighbours match the store-embedder's one. At
inference, p = β·p_student + (1−β)·Σ_j softmax(sim_j/τ)·p_teacher(j) over the top-k retrieved entries.
The training recipes (``--method retrikt`` and the ``kd`` baseline) are retrikt/methods/retrikt.py and kd.py.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retrikt import models
from retrikt.config import arg
from retrikt.io import RetriktError, atomic_write_json
from retrikt.store.prior import reweight
from retrikt.store.samples import embed_examples, pair_format
from retrikt.student.encoder import EncoderClassifier
from retrikt.student.trainer import FitConfig, example_loss

logger = logging.getLogger(__name__)


@dataclass
class RetrievalSettings:
    k: int = arg(8, help="neighbours retrieved per input")
    beta: float = arg(0.5, help="weight of the student's own prediction (1 = no retrieval)")
    tau: float = arg(0.1, help="softmax temperature over neighbour similarities")
    rel_weight: float = arg(1.0, help="weight of the relational (neighbour-similarity) loss; 0 disables it")
    holdout: float = arg(0.25, help="share of the k-shot set held out to choose k, beta and tau")
    labels: str = arg("teacher", help="what a neighbour votes with: teacher (its soft label, the paper's) | "
                                      "conditioned (one-hot of the label its generation was conditioned on); "
                                      "chosen on the held-out examples with k, beta and tau",
                      choices=["teacher", "conditioned"])
    keys: str = arg("store", help="the key space retrieval searches: store (the store's embedder, the student's "
                                  "query projected into it) | student (the trained student's own pooled embeddings "
                                  "of the store's texts: task-aware keys, no projection) | teacher (the labeller's "
                                  "answer-position states, python -m retrikt.keys; the query projected into them)",
                    choices=["store", "student", "teacher"])
    key_align: float = arg(1.0, help="keys = teacher: weight of the cosine loss that pulls the student's projected "
                                     "query onto each training example's own teacher key")
    label_weights: list[float] | None = arg(None, help="per-class weights applied to the store's teacher soft "
                                                       "labels before they vote (--store-prior); None = as stored")


def store_examples(store, ids=None, label_weights=None) -> list[dict]:
    """Store entries as task examples carrying the teacher's soft labels (re-weighted per class by
    ``label_weights``: --store-prior)."""
    ids = range(len(store)) if ids is None else ids
    out = []
    for i, e in zip(ids, store.entries(list(ids))):
        soft = e.get("soft_label") or None
        if soft is not None and label_weights is not None:
            soft = reweight(np.asarray([soft]), label_weights)[0].tolist()
        out.append({**e["fields"], "label": e["label"], "soft_label": soft, "idx": -1 - int(i)})
    return out


def neighbour_vote(scores: np.ndarray, ids: np.ndarray, votes: np.ndarray, k: int, tau: float) -> np.ndarray:
    """Σ_j softmax(score_j/τ)·votes[id_j] over the first k neighbours: the retrieval half of the RetriKT mixture."""
    s, idx = scores[:, :k], ids[:, :k]
    w = np.exp((s - s.max(1, keepdims=True)) / tau)
    w /= w.sum(1, keepdims=True)
    return (w[..., None] * votes[idx]).sum(1)


class RetrievalStudent(nn.Module):
    def __init__(self, base: EncoderClassifier, store, settings: RetrievalSettings, use_retrieval: bool = True,
                 teacher_keys=None):
        super().__init__()
        self.base, self.store, self.settings, self.use_retrieval = base, store, settings, use_retrieval
        self.task = base.task
        self.trained_keys = settings.keys  # the space the projection learnt; settings.keys may later search another
        self.teacher_keys = None  # keys = teacher: the labeller's states beside the store (given, or loaded here)
        if settings.keys == "teacher":
            from retrikt.store.teacher_keys import load_teacher_keys
            if isinstance(store, MemoryStore):
                raise RetriktError("teacher keys cover the store's own entries: retrieve from the store only")
            self.teacher_keys = teacher_keys if teacher_keys is not None else load_teacher_keys(store)
        key_dim = self.teacher_keys.dim if self.teacher_keys is not None else int(store.manifest["embedder"]["dim"])
        hidden = base.encoder.config.hidden_size
        self.proj = nn.Linear(hidden, key_dim, bias=False).to(base.device)
        if hidden == key_dim:  # same space size: start from the identity, the cheapest correct guess
            with torch.no_grad():
                self.proj.weight.copy_(torch.eye(key_dim))
        # Neighbours vote with the teacher's soft label (one-hot of the conditioned label when there is none), or
        # with the conditioned label: a weak teacher can label worse than the generator was steered.
        entries = store.entries(list(range(len(store))))
        self.teacher_probs = np.array([e.get("soft_label") or _onehot(e, self.task.num_labels) for e in entries],
                                      dtype=np.float32)
        if settings.label_weights is not None:
            self.teacher_probs = reweight(self.teacher_probs, settings.label_weights).astype(np.float32)
        self.conditioned_probs = np.array([_onehot(e, self.task.num_labels) for e in entries], dtype=np.float32)
        self.student_keys: np.ndarray | None = None  # set by rekey(): the store's texts in the student's own space
        self.variants: dict[str, dict] = {}  # ablation settings to score besides the chosen ones (set by the recipe)

    @torch.no_grad()
    def rekey(self, batch_size: int = 64) -> None:
        """Embed every memory entry with the trained student (keys = student): a space shaped by the task's labels,
        where the store embedder's is not. Deterministic given the weights, so a reloaded student recomputes it."""
        entries = self.store.entries(list(range(len(self.store))))
        texts = [dict(e["fields"]) for e in entries]
        self.student_keys = self.base.encode(texts, batch_size) if texts else np.zeros((0, 1), np.float32)

    def tokenize(self, examples):
        return self.base.tokenize(examples)

    def forward(self, batch):
        return self.base(batch)

    def query(self, batch) -> torch.Tensor:
        return F.normalize(self.proj(self.base.embed(batch)), dim=-1)

    def mix(self, p_student: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int, beta: float,
            tau: float, labels: str = "teacher") -> np.ndarray:
        """β·p_student + (1−β)·Σ softmax(score/τ)·p_label over the first k neighbours."""
        votes = self.conditioned_probs if labels == "conditioned" else self.teacher_probs
        p_ret = neighbour_vote(scores, ids, votes, k, tau)
        return beta * p_student + (1 - beta) * p_ret

    @torch.no_grad()
    def _student_and_neighbours(self, examples, k: int, batch_size: int = 32, keys: str | None = None):
        """The student's probabilities and the top-k neighbours' (scores, ids) in key space ``keys`` (default: the
        settings')."""
        self.eval()
        keys = keys or self.settings.keys
        probs, queries = [], []
        for i in range(0, len(examples), batch_size):
            # one encoder pass serves both the student's own prediction and the retrieval query
            emb = self.base.embed(self.tokenize(examples[i:i + batch_size]))
            probs.append(self.base.head(emb).softmax(-1).float().cpu())
            queries.append(F.normalize(emb if keys == "student" else self.proj(emb), dim=-1).float().cpu())
        q = torch.cat(queries).numpy()
        scores, ids = self._search(q, k, keys)
        return torch.cat(probs).numpy(), np.asarray(scores), np.asarray(ids)

    def key_matrix(self) -> np.ndarray:
        """The keys the projected query is trained against (relational loss): the teacher's or the store's."""
        return self.teacher_keys.entries if self.teacher_keys is not None else self.store.embeddings

    def _search(self, q: np.ndarray, k: int, keys: str):
        if keys == "store":
            return self.store.search(q, k)
        if keys == "student" and self.student_keys is None:
            self.rekey()
        mat = self.student_keys if keys == "student" else self.teacher_keys.entries
        k = min(k, len(mat))
        sims = q @ mat.T  # exact: a store is thousands of rows
        ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, ids, 1), ids

    def variant_settings(self) -> dict[str, dict]:
        """Settings to score besides the chosen ones, for the record only (ablations from one trained student):
        set by the training recipe, never chosen on what they are scored on."""
        return self.variants

    def predict_proba(self, examples: list[dict], batch_size: int = 32) -> np.ndarray:
        s = self.settings
        p, scores, ids = self._student_and_neighbours(examples, s.k, batch_size, s.keys)
        if not self.use_retrieval or s.beta >= 1.0:
            return p
        return self.mix(p, scores, ids, s.k, s.beta, s.tau, s.labels)

    def num_parameters(self) -> int:
        return self.base.num_parameters() + sum(p.numel() for p in self.proj.parameters())

    def save(self, folder: str | Path, meta: dict | None = None) -> None:
        from safetensors.torch import save_file
        folder = Path(folder)
        self.base.save(folder, meta=meta)
        save_file({"weight": self.proj.weight.detach().cpu().contiguous()}, str(folder / "proj.safetensors"))
        on_disk = self.store if not isinstance(self.store, MemoryStore) else self.store.base
        extra = len(self.store.extra[1]) if isinstance(self.store, MemoryStore) else 0
        if extra:  # labelled examples the student retrieves besides the store: kept with it
            emb, entries = self.store.extra
            save_file({"embeddings": torch.from_numpy(np.ascontiguousarray(emb))}, str(folder / "memory.safetensors"))
            atomic_write_json(folder / "memory.json", {"embedder": self.store.manifest["embedder"],
                                                       "entries": entries})
        atomic_write_json(folder / "retrieval.json", {
            "settings": self.settings.__dict__, "trained_keys": self.trained_keys, "use_retrieval": self.use_retrieval,
            "memory_rows": extra,
            "store": str(Path(on_disk.folder).resolve()) if on_disk is not None else None,
            "store_checksum": on_disk.checksum if on_disk is not None else None})


def _onehot(entry: dict, n: int) -> list[float]:
    v = [0.0] * n
    v[int(entry["label"])] = 1.0
    return v


def relational_targets(store, texts_emb: np.ndarray, k: int, exclude: list[int | None]):
    """Neighbour ids and the store-embedder's similarity to them, excluding each entry itself."""
    scores, ids = store.search(texts_emb.astype(np.float32), k + 1)
    out_ids, out_sims = [], []
    for row_s, row_i, self_id in zip(scores, ids, exclude):
        keep = [(s, i) for s, i in zip(row_s, row_i) if i != self_id and i >= 0][:k]
        out_ids.append([i for _, i in keep])
        out_sims.append([s for s, _ in keep])
    # int64 and (n, k) even when k == 0 (a one-entry store): an empty float array cannot index the embeddings
    return (np.array(out_ids, dtype=np.int64).reshape(len(out_ids), k),
            np.array(out_sims, dtype=np.float32).reshape(len(out_sims), k))


class MemoryStore:
    """A store held in memory (exact search): the store plus the labelled k-shot examples (``base`` = the on-disk
    store whose rows come first), the k-shot-only retrieval ablation, and tests."""

    def __init__(self, embeddings: np.ndarray, entries: list[dict], embedder: dict, folder: str = "<memory>",
                 base=None):
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._entries = entries
        self.manifest = {"embedder": embedder}
        self.base = base
        self.folder = base.folder if base is not None else folder
        self.checksum = base.checksum if base is not None else "memory"

    @property
    def extra(self) -> tuple[np.ndarray, list[dict]]:
        """The rows that are not in ``base``: they are saved with a student, the base store is pointed to."""
        n = len(self.base) if self.base is not None else 0
        return self.embeddings[n:], self._entries[n:]

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self, ids) -> list[dict]:
        return [self._entries[int(i)] for i in ids]

    def search(self, q: np.ndarray, k: int):
        k = min(k, len(self))
        sims = q @ self.embeddings.T
        ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, ids, 1), ids


def open_store(path: str | None):
    if not path:
        raise RetriktError("this method needs a knowledge store: pass --store FOLDER (build one with "
                           "python -m retrikt.build)")
    from retrikt.store import Store
    return Store.open(path)


def check_store(store, task, train: list[dict], seed: int, allow_foreign: bool = False) -> dict:
    """Refuse a store of another task, or one built from another k-shot set than ``train`` (unless ``allow_foreign``):
    its teacher learnt from examples this run may not see. A store without ``kshot_idx`` (older) passes with a
    warning. Returns the store's provenance for the results record."""
    m = store.manifest
    if m.get("task") != task.name:
        raise RetriktError(f"{store.folder} is a store for task {m.get('task')!r}; this run trains {task.name!r}: "
                           f"build one with python -m retrikt.build --task {task.name}")
    facts = {"store_seed": m.get("seed"), "store_source": m.get("source", "generated")}
    if "kshot_idx" not in m:
        logger.warning("%s records no k-shot set (an older store): cannot check that it was built from seed %d's",
                       store.folder, seed)
        return facts
    if Counter(m["kshot_idx"]) == Counter(e.get("idx") for e in train):  # the order the k-shot set comes in is free
        return facts
    why = (f"{store.folder} was built from the k-shot set of seed {m.get('seed')}, not this run's (seed {seed}, "
           f"{len(train)} examples)")
    if not allow_foreign:
        raise RetriktError(f"{why}: a student would learn from training examples outside its k-shot set. Build a "
                           f"store with --seed {seed} (and the same --shots), or pass --allow-foreign-store (the run "
                           "then is not k-shot)")
    logger.warning("%s; --allow-foreign-store: this run is not k-shot", why)
    return facts | {"foreign_store": True}


def store_embedder(store):
    """The store's own embedder (named in its manifest), used for teacher-side similarities."""
    info = store.manifest["embedder"]
    return models.load_sentence_transformer(info["name"])


def store_keys_of(store, embedder, task, examples: list[dict]) -> np.ndarray:
    """``examples`` embedded as ``store``'s keys were (its embedder, its pair format), to compare with them."""
    return embed_examples(embedder, task, examples, pair_format(store.manifest))


def retrieval_loss(model: RetrievalStudent, batch: list[dict], cfg: FitConfig, rel_weight: float,
                    tau: float) -> torch.Tensor:
    tok = model.tokenize(batch)
    emb = model.base.embed(tok)
    logits = model.base.head(model.base.dropout(emb))
    loss = example_loss(logits, batch, model.task, cfg)
    if rel_weight <= 0 or len(batch[0]["nbr_ids"]) == 0:  # no neighbours to match (a one-entry store)
        return loss
    q = F.normalize(model.proj(emb), dim=-1)
    keys = torch.as_tensor(model.key_matrix()[np.stack([e["nbr_ids"] for e in batch])], device=q.device)
    target = torch.as_tensor(np.stack([e["nbr_sims"] for e in batch]), device=q.device)
    student_sims = (q[:, None, :] * keys).sum(-1)
    rel = F.kl_div(F.log_softmax(student_sims / tau, -1), F.softmax(target / tau, -1), reduction="batchmean")
    loss = loss + rel_weight * rel
    if model.settings.key_align > 0 and "tkey" in batch[0]:  # land the query on its own key
        own = torch.as_tensor(np.stack([e["tkey"] for e in batch]), device=q.device)
        loss = loss + model.settings.key_align * (1 - (q * own).sum(-1)).mean()
    return loss


def load_retrieval_student(folder: str | Path, task, base: str, store_path: str | None = None):
    """Reload a saved retrieval student; refuses a store whose manifest checksum differs from the pinned one."""
    from safetensors.torch import load_file

    from retrikt.student.encoder import load_student
    folder = Path(folder)
    info = json.loads((folder / "retrieval.json").read_text())
    store = None
    if info["store"] is not None or store_path:
        store = open_store(store_path or info["store"])
        if store.checksum != info["store_checksum"]:
            raise RetriktError(f"{folder}: the student was trained with store checksum "
                               f"{str(info['store_checksum'])[:12]}…, but {store.folder} has {store.checksum[:12]}… "
                               "(a different or rebuilt store)")
    if info.get("memory_rows"):
        store = _with_memory(folder, store, info["memory_rows"])
    settings = RetrievalSettings(**info["settings"])
    searched, settings.keys = settings.keys, info.get("trained_keys", settings.keys)  # rebuild the projection it learnt
    model = RetrievalStudent(load_student(folder, task, base=base), store, settings,
                             use_retrieval=info["use_retrieval"])
    model.proj.load_state_dict(load_file(str(folder / "proj.safetensors")))
    model.settings.keys = searched
    return model


def _with_memory(folder: Path, store, rows: int) -> MemoryStore:
    """The saved student's memory: the store's rows (if any) followed by its saved labelled examples."""
    from safetensors.torch import load_file
    mem = json.loads((folder / "memory.json").read_text())
    emb = load_file(str(folder / "memory.safetensors"))["embeddings"].numpy()
    if len(emb) != rows or len(mem["entries"]) != rows:
        raise RetriktError(f"{folder}: memory.json / memory.safetensors do not hold the {rows} saved rows")
    if store is None:
        return MemoryStore(emb, mem["entries"], mem["embedder"], folder=str(folder))
    if store.manifest["embedder"] != mem["embedder"]:
        raise RetriktError(f"{folder}: saved memory was embedded with {mem['embedder']}, the store with "
                           f"{store.manifest['embedder']}")
    return MemoryStore(np.concatenate([store.embeddings, emb]), store.entries(range(len(store))) + mem["entries"],
                       store.manifest["embedder"], base=store)
