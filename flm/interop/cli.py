"""`flm export hf|gguf CKPT OUT` and `flm import hf MODEL OUT`: checkpoints to and from Hugging Face
transformers folders and GGUF files, streamed tensor by tensor."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from flm.cli_args import add_command, add_command_group

if TYPE_CHECKING:
    from flm.interop.hf_export import IOReport

DTYPE_NAMES = ("fp32", "bf16", "fp16")  # flm.interop.hf_export.DTYPES (tests/interop check they agree)


def _print(rep: IOReport, what: str) -> int:
    print(f"wrote {rep.out} ({what}; {rep.bytes_written / 1e9:.3f} GB of tensors in {rep.seconds:.1f} s)")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    """export a checkpoint as a Hugging Face transformers folder

    Write a folder that transformers' AutoModelForCausalLM.from_pretrained loads without flm: a plain
    GPTNeoXForCausalLM when the model has no xPos, otherwise the FLM architecture as remote code (load with
    trust_remote_code=True). The tokenizer (tokenizer.json, special and label tokens kept) and a generation
    config go with it. Tensors are streamed one at a time. A checkpoint in the middle of a growth ramp is
    refused (its masks are no part of a transformers model).
    """
    from flm.interop.hf_export import export_hf
    return _print(export_hf(args.ckpt, args.out, args.dtype), "transformers folder")


def _export_gguf(args: argparse.Namespace) -> int:
    """export a checkpoint (no xPos) as a GGUF file in llama.cpp's GPT-NeoX layout

    Write OUT.gguf with the gguf package: architecture gptneox, fp32 tensors, the tokenizer as a byte-level
    BPE vocabulary with merges. Models with xPos (or other options GPT-NeoX lacks) are refused, as is a
    checkpoint in the middle of a growth ramp. Tensors are streamed one at a time.
    """
    from flm.interop.gguf_export import export_gguf
    return _print(export_gguf(args.ckpt, args.out), "GGUF file")


def _import_hf(args: argparse.Namespace) -> int:
    """import a local Hugging Face transformers folder as an flm checkpoint

    Read a GPT-NeoX folder (model_type gpt_neox, sequential residual, full rotary, tied embeddings) or one in
    the released FLM-101B format (model_type flm) into a new flm checkpoint that flm train --init, flm grow,
    flm generate and flm eval accept. Variants flm cannot represent are refused with one line naming the
    difference. No download: MODEL is a local folder.
    """
    from flm.interop.hf_import import import_hf
    return _print(import_hf(args.model, args.out, args.tokenizer), "flm checkpoint")


def _in_out(p: argparse.ArgumentParser, src: str, src_help: str, out_help: str) -> argparse.ArgumentParser:
    p.add_argument(src.lower(), metavar=src, help=src_help)
    p.add_argument("out", metavar="OUT", help=f"{out_help} (must not exist)")
    return p


def register(sub: argparse._SubParsersAction) -> None:
    ckpt_help = "checkpoint folder or run folder (its newest checkpoint)"
    ex = add_command_group(
        sub, "export", help="export a checkpoint to Hugging Face transformers (hf) or GGUF (gguf)",
        description="Write an flm checkpoint in another format, streamed tensor by tensor.", metavar="FORMAT",
    )  # fmt: skip
    p = _in_out(add_command(ex, "hf", _export_hf), "CKPT", ckpt_help, "new folder")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="weights' dtype (default fp32)")
    _in_out(add_command(ex, "gguf", _export_gguf), "CKPT", ckpt_help, "new .gguf file")
    im = add_command_group(
        sub, "import", help="import a Hugging Face transformers folder as an flm checkpoint (hf)",
        description="Read a model of another format into a new flm checkpoint, streamed tensor by tensor.",
        metavar="FORMAT",
    )  # fmt: skip
    p = _in_out(add_command(im, "hf", _import_hf), "MODEL", "local transformers folder (config.json + weights)",
                "new checkpoint folder")  # fmt: skip
    p.add_argument(
        "--tokenizer", metavar="PATH", default=None, help="tokenizer.json (or its folder) when MODEL has none"
    )
