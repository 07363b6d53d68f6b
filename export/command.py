"""The `hiertcn export` subcommand: checkpoint in, verified model bundle out.

    hiertcn export --checkpoint runs/ml/best.pt --out bundles/ml-v1 --verify

torch and onnx are imported inside the handler, so `hiertcn --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from export.errors import ExportError
from hiertcn.command_line import float_type, format_number
from hiertcn.errors import HierTCNError

logger = logging.getLogger(__name__)


class ExportCommandError(HierTCNError):
    """An `ExportError` raised by the handler, reported by the CLI with the same exit code."""

    def __init__(self, error: ExportError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand to the `hiertcn` parser."""
    parser = subparsers.add_parser(
        "export",
        help="export a trained checkpoint, such as a hiertcn one, to an ONNX model bundle",
        description="Write the model bundle (ONNX graphs, item table, manifest) of a checkpoint. "
        "The model must provide the serving members session_user_embedding, close_session, "
        "start_state and a finite receptive_field, which docs/architecture.md defines in the "
        'section "Models". Of the built-in models, hiertcn provides them.',
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (best.pt of a run)")
    parser.add_argument(
        "--out",
        required=True,
        help="bundle directory to create, which must not exist or be empty. When it is a "
        "symlink, the bundle goes to the folder that the link points to, and the link stays",
    )
    parser.add_argument(
        "--float16", action="store_true", help="store the item table as float16 (half the memory)"
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="default recommendation list length, at most the number of items "
        "(default: 20, or the number of items when fewer)",
    )
    parser.add_argument(
        "--session-gap",
        type=float_type,
        default=None,
        help="idle seconds that close a session (default: the checkpoint's, else 1800)",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset version of the graphs, from 14 to the newest "
        "that the installed torch exports (default: 17)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare ONNX Runtime with torch at batch 1, 7 and 256 and every prefix length up "
        "to the receptive field, on random and real inputs, and exit 1 when embeddings or states "
        "differ by more than 1e-4 or the top-20 item lists differ. The check runs before the "
        "bundle is moved to --out, so a failed check writes nothing there",
    )
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Export the checkpoint, optionally verify the bundle, and print a summary."""
    try:
        return _run(args)
    except ExportError as error:
        raise ExportCommandError(error) from error


def _run(args: argparse.Namespace) -> int:
    import torch

    from export.bundle import load_bundle
    from export.errors import ExportFailedError, VerificationError
    from export.manifest import SESSION_GAP_RANGE, valid_session_gap
    from export.onnx_export import (
        DEFAULT_OPSET,
        MIN_OPSET,
        ExportConfig,
        max_opset,
        opset_fix,
        write_bundle,
    )
    from export.verify import verify_bundle
    from hiertcn.checkpoint import load_model

    # ExportConfig checks these too, but by field name; the command names its flags.
    if args.top_k is not None and args.top_k < 1:
        raise ExportFailedError(f"--top-k {args.top_k} is invalid: use a positive integer")
    if args.opset is not None and not MIN_OPSET <= args.opset <= max_opset():
        raise ExportFailedError(f"--opset {args.opset} is invalid: {opset_fix()}")
    if args.session_gap is not None and not valid_session_gap(args.session_gap):
        raise ExportFailedError(
            f"--session-gap {format_number(args.session_gap)} is invalid: use {SESSION_GAP_RANGE}"
        )
    config = ExportConfig(
        opset=args.opset if args.opset is not None else DEFAULT_OPSET,
        float16_items=args.float16,
        top_k=args.top_k,
        session_gap=args.session_gap,
    )
    model, checkpoint = load_model(args.checkpoint)

    def verify_before_writing(folder: Path) -> None:
        # Verification makes hundreds of small calls on each side, where handing work to a
        # thread pool costs more than it saves (and much more on a busy host), so both sides
        # use one thread.
        torch.set_num_threads(1)
        report = verify_bundle(model, load_bundle(folder, intra_op_threads=1))
        print(report.format())
        if not report.passed:
            raise VerificationError(
                "ONNX Runtime and torch disagree beyond the tolerance in the checks above, so "
                f"nothing was written to --out {args.out}: export again without --verify only "
                "to inspect the bundle, not to deploy it"
            )

    check = verify_before_writing if args.verify else None
    manifest = write_bundle(model, checkpoint, args.out, config, check=check)
    print(
        f"wrote {args.out}: version {manifest.version}, {manifest.num_items} items, "
        f"D={manifest.embedding_dim}, G={manifest.gru_layers}, H={manifest.hidden_size}, "
        f"receptive field {manifest.max_session_items}"
    )
    return 0
