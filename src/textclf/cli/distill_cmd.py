"""``textclf distill`` (a student trained on a teacher's labels) and ``textclf cascade`` (student first, teacher for the rest)."""

from __future__ import annotations

import click

from textclf.cli.compare_cmd import data_format_options
from textclf.cli.family_cmd import store_options
from textclf.cli.options import FormatChoice, code_option, config_options, data_options, trust_code_option
from textclf.services.distill import DEFAULT_REPEATS


@click.command()
@code_option
@trust_code_option
@click.option("--teacher", required=True, type=click.Path(), help="The teacher's model directory (any kind).")
@click.option("--student", required=True, help="The student's family (fasttext, embeddings, ...: `textclf families`).")
@data_options
@config_options
@click.option("--unlabeled_path", type=click.Path(dir_okay=False), default=None,
              help="Unlabelled texts the teacher labels for the student (any format predict reads). Default: the train texts.")
@click.option("--unlabeled_format", type=FormatChoice("texts"), default=None,
              help="Format of --unlabeled_path (default: from the extension).")
@click.option("--text_column", default="text", show_default=True, help="Text column/key of --unlabeled_path (CSV/JSONL).")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Soften the teacher's probabilities (logits / T) before its confidence weights the rows.")
@click.option("--repeats", type=int, default=DEFAULT_REPEATS, show_default=True,
              help="A text the teacher is certain of enters the student's training set this many times (chance confidence: 0).")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Rescale the teacher rows' copies per class so they keep the gold labels' class shares.")
@click.option("--batch_size", type=int, default=256, show_default=True, help="Teacher prediction batch size.")
@click.option("--soft/--hard", default=None,
              help="Learn the teacher's soft labels as per-row weights (default when the student's family takes weights: "
                   "embeddings), or its hard labels with confidence-weighted copies (the default for the others).")
@click.option("--augment", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also let the teacher label N synthetic variants of each training text (token deletion, n-gram "
                   "sampling; seeded by the config's seed). 5 is the measured choice for a fastText or BiLSTM student "
                   "without unlabelled text (+0.024 to +0.036 over fastText on gold); it costs the teacher N more "
                   "predictions a text.")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Keep the teacher's probabilities in the embedding cache ($TEXTCLF_CACHE): another distill from the "
                   "same teacher predicts nothing again, an interrupted one resumes.")
@store_options
def distill(teacher, student, train_path, valid_path, test_path, output_dir, config_path, overrides, unlabeled_path,
            unlabeled_format, text_column, temperature, repeats, balance, batch_size, soft, augment, cache, tracking_uri,
            track):
    """Train a STUDENT family on the gold labels plus TEACHER's labels of the train (and unlabelled) texts."""
    from textclf.services.distill import DistillSpec
    from textclf.services.distill import distill as run_distill
    from textclf.services.runs import RunSpec

    run = RunSpec(family=student, train_path=train_path, valid_path=valid_path, test_path=test_path, output_dir=output_dir,
                  config=config_path, overrides=tuple(overrides), track=track, tracking_uri=tracking_uri, command="distill")
    result = run_distill(DistillSpec(run, teacher, unlabeled_path, unlabeled_format, text_column, temperature, repeats,
                                     batch_size, balance, soft, augment, cache))
    click.echo(f"distilled {student} student written to {result.model_dir}")


@click.command()
@code_option
@trust_code_option
@click.option("--student", required=True, type=click.Path(), help="The fast model directory (answers when confident).")
@click.option("--teacher", required=True, type=click.Path(), help="The strong model directory (answers the rest).")
@click.option("--valid_path", required=True, type=click.Path(dir_okay=False), help="Labelled file tau is chosen on.")
@click.option("--output_dir", required=True, type=click.Path(file_okay=False), help="The cascade's model directory.")
@click.option("--max_f1_loss", type=float, default=None,
              help="Target (default 0.005): the fewest texts to the teacher with valid macro-F1 >= the teacher's - this.")
@click.option("--min_docs_per_s", type=float, default=None,
              help="Target: the best valid macro-F1 whose estimated speed is >= this many docs/s.")
@click.option("--test_path", type=click.Path(dir_okay=False), default=None, help="Optional labelled test file, scored once.")
@data_format_options
@click.option("--batch_size", type=int, default=256, show_default=True)
@click.option("--max_model_mb", type=float, default=None,
              help="Refuse a student + teacher pair whose sizes add up to more (MiB; as ensemble --max_model_mb).")
@click.option("--confidence", type=float, default=None,
              help="With --max_f1_loss: the loss must hold at this one-sided lower bound of a paired bootstrap on valid "
                   "(e.g. 0.9), not only on valid's point estimate: safer on new texts, more of them to the teacher.")
def cascade(student, teacher, valid_path, output_dir, max_f1_loss, min_docs_per_s, test_path, text_column, label_column,
            data_format, batch_size, max_model_mb, confidence):
    """Build a cascade: STUDENT answers when its confidence >= tau, TEACHER the rest; tau chosen on valid for the target."""
    from textclf.services.compare.cascade import build_cascade

    build_cascade(student, teacher, valid_path, output_dir, max_f1_loss, min_docs_per_s, test_path, data_format,
                  text_column, label_column, batch_size, echo=True, max_model_mb=max_model_mb, confidence=confidence)
