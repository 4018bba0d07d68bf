"""Admin commands of the labeling app: ``python -m feedback_lm.label COMMAND CAMPAIGN_DIR ...``.

::

    python -m feedback_lm.label create runs/label1 --model tiny-gpt2 --task word_sorting --num-prompts 20 \\
        --k 4 --mode rank --likert --flags harmful,fails_instruction --overlap 2 --seed 0
    python -m feedback_lm.label add-labeler runs/label1 ada        # prints ada's token once
    python -m feedback_lm.label rotate runs/label1 ada             # a new token (the old one stops working)
    python -m feedback_lm.label revoke runs/label1 ada             # no more sign-in; labels kept
    python -m feedback_lm.label remove-labeler runs/label1 ada     # delete ada and ada's labels
    python -m feedback_lm.label admin-token runs/label1            # the researcher's page: /admin
    python -m feedback_lm.label serve runs/label1 --port 8000      # then open http://127.0.0.1:8000
    python -m feedback_lm.label stats runs/label1 [--json stats.json]
    python -m feedback_lm.label export runs/label1 --out labels.jsonl
    python train.py algo=reward_model data=comparisons data.source=jsonl data.path=labels.jsonl

A campaign directory holds ``campaign.json`` (name and database) and, by default, the SQLite
database ``labels.sqlite``; both, and the files ``export`` and ``stats --json`` write, are created
readable by their owner only (0600). ``--db postgresql://user@host/db`` (or ``FEEDBACK_LM_LABEL_DB``) puts the
store in PostgreSQL for a team; several campaigns can share one database.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

from feedback_lm.errors import UserError
from feedback_lm.label import campaign as sources
from feedback_lm.label.config import MODES, CampaignConfig
from feedback_lm.label.pairwise import format_win_rates, human_win_rates
from feedback_lm.label.stats import format_stats, label_stats
from feedback_lm.label.store import (
    CAMPAIGN_FILE,
    SQLITE_FILE,
    Store,
    check_items,
    open_campaign,
    private_file,
)

__all__ = ["main"]


def create(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    if (directory / CAMPAIGN_FILE).exists():
        raise UserError(f"{directory} already holds a campaign ({CAMPAIGN_FILE}); pick a new directory")
    if args.items and args.model:
        raise UserError("give either --items (responses sampled already) or --model (sample them now), not both")
    if args.items:
        items = sources.read_items(args.items)
        source = {"items": str(args.items)}
    elif args.model:
        if bool(args.prompts) == bool(args.task):
            raise UserError("with --model, give the prompt set: --prompts FILE or --task NAME")
        try:
            difficulty = json.loads(args.difficulty) if args.difficulty else {}
        except json.JSONDecodeError as err:
            raise UserError(f"--difficulty is not valid JSON ({err.msg}); e.g. '{{\"max_words\": 3}}'") from None
        prompts = (sources.read_prompts(args.prompts) if args.prompts else
                   sources.task_prompts(args.task, args.num_prompts, args.seed, difficulty,
                                        args.template.replace("\\n", "\n")))
        items = sources.sample_items(args.model, prompts, args.k, temperature=args.temperature, top_p=args.top_p,
                                     max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                     seed=args.seed, device=args.device)
        source = {"policy": args.model, "prompts": args.prompts or f"task:{args.task}",
                  "sampling": items[0]["meta"]["sampling"] if items else {}, "seed": args.seed}
    else:
        raise UserError("give --model (with --prompts or --task) to sample items, or --items FILE")
    flags = [f.strip() for f in args.flags.split(",") if f.strip()] if args.flags else []
    config = CampaignConfig(mode=args.mode, likert=args.likert, flags=flags, overlap=args.overlap,
                            lease_seconds=args.lease_minutes * 60, instructions=args.instructions, source=source)
    gold = sources.read_gold(args.gold) if args.gold else []
    check_items(items + gold)  # before anything is created
    sizes = {len(it["responses"]) for it in items}
    odd = [n for n, g in enumerate(gold, start=1) if items and len(g["responses"]) not in sizes]
    if odd:
        raise UserError(f"--gold {args.gold}: row {odd[0]} has {len(gold[odd[0] - 1]['responses'])} responses but the "
                        f"items have {sorted(sizes)}; gold items must look like the others, or they stand out")
    name = args.name or directory.resolve().name
    directory.mkdir(parents=True, exist_ok=True)
    store = Store.create(args.db or str(directory / SQLITE_FILE), name, config)
    store.add_items(sources.interleave_gold(items, gold))
    store.close()
    private_file(directory / CAMPAIGN_FILE)
    (directory / CAMPAIGN_FILE).write_text(json.dumps({"name": name, "db": args.db}, indent=2) + "\n")
    print(f"created campaign {name!r} in {directory}: {len(items)} items, {len(gold)} gold items, "
          f"mode {args.mode}, overlap {args.overlap}")
    print(f"next: python -m feedback_lm.label add-labeler {directory} NAME")


def add_labeler(args: argparse.Namespace) -> None:
    store = open_campaign(args.dir, args.db)
    token = store.add_labeler(args.name)
    store.close()
    print(f"token for {args.name} (shown once; only its hash is stored):\n{token}")


def rotate(args: argparse.Namespace) -> None:
    store = open_campaign(args.dir, args.db)
    token = store.rotate(args.name)
    store.close()
    print(f"new token for {args.name} (the old one no longer signs in; shown once):\n{token}")


def revoke(args: argparse.Namespace) -> None:
    store = open_campaign(args.dir, args.db)
    released = store.revoke(args.name)
    store.close()
    print(f"revoked {args.name}'s token ({released} held item(s) released; their labels are kept; "
          f"`rotate` gives them a new token)")


def remove_labeler(args: argparse.Namespace) -> None:
    store = open_campaign(args.dir, args.db)
    deleted = store.remove_labeler(args.name)
    store.close()
    print(f"removed {args.name} and their {deleted} label(s) from {store.name!r}")


def admin_token(args: argparse.Namespace) -> None:
    store = open_campaign(args.dir, args.db)
    token = store.admin_token()
    store.close()
    print(f"admin token for the researcher's page /admin of {store.name!r} (any previous admin token stops "
          f"working; shown once):\n{token}")


def serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from feedback_lm.label.app import create_app
    except ImportError:
        raise UserError("serve needs the label extra: pip install 'feedback_lm[label]' (FastAPI, uvicorn)") from None
    store = open_campaign(args.dir, args.db)
    print(f"labeling {store.name!r} at http://{args.host}:{args.port}/ (Ctrl+C stops)", flush=True)
    uvicorn.run(create_app(store, openapi=args.openapi), host=args.host, port=args.port, log_level=args.log_level)


def stats(args: argparse.Namespace) -> None:
    store = open_campaign(args.dir, args.db)
    rows = store.labeled_rows()
    result = label_stats(rows, store.counts(), store.config.mode)
    store.close()
    print(format_stats(result))
    if rates := human_win_rates(rows):  # pairwise campaigns (python -m feedback_lm.evaluate --campaign)
        result["human_win_rates"] = rates
        print(format_win_rates(rates))
    if args.json:
        private_file(args.json)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def export(args: argparse.Namespace) -> None:
    store = open_campaign(args.dir, args.db)
    rows = store.labeled_rows()
    comparisons = store.export_labeled(args.out, include_gold=not args.no_gold)
    store.close()
    print(f"wrote {len(comparisons)} comparison rows to {args.out} ({len(rows)} labels; rankings that tie every "
          f"response give no pair and are left out{'; gold items left out' if args.no_gold else ''})")
    if not comparisons:
        print("warning: nothing to train on yet; label some items first", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m feedback_lm.label",
                                description="Human feedback labeling: campaigns, labelers, the web app, export.")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("dir", help="the campaign directory")
        sp.add_argument("--db", default=None, help="database URL (postgresql://...); default: the campaign's own "
                                                   "(FEEDBACK_LM_LABEL_DB, campaign.json, else DIR/labels.sqlite)")
        sp.set_defaults(fn=fn)
        return sp

    c = command("create", create, "make a campaign: K samples per prompt from a policy, or items from a file")
    c.add_argument("--name", help="campaign name (default: the directory's name)")
    c.add_argument("--model", help="policy: tiny preset, saved model directory (a run's <run>/model) or HF name")
    c.add_argument("--prompts", help="prompt set: .txt (one per line) or .jsonl ({\"prompt\": ...} rows)")
    c.add_argument("--task", help="prompt set from a built-in task instead (as feedback_lm.collect)")
    c.add_argument("--num-prompts", type=int, default=20)
    c.add_argument("--difficulty", help="task difficulty knobs as JSON")
    c.add_argument("--template", default="Q: {input}\\nA:")
    c.add_argument("--items", help="responses sampled already: a comparisons JSONL (its labels are ignored)")
    c.add_argument("--gold", help="gold items with known answers: a comparisons JSONL")
    c.add_argument("--k", type=int, default=4, help="samples per prompt")
    c.add_argument("--mode", choices=MODES, default="rank", help="best: pick the best; rank: order all, ties allowed")
    c.add_argument("--likert", action="store_true", help="ask for a 1-7 quality rating of every response")
    c.add_argument("--flags", default="", help="comma-separated flags, e.g. harmful,fails_instruction")
    c.add_argument("--overlap", type=int, default=1, help="different people per item")
    c.add_argument("--lease-minutes", type=float, default=15.0, help="how long an item is held for its labeler")
    c.add_argument("--instructions", default="", help="shown above every item")
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--max-new-tokens", type=int, default=48)
    c.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")

    a = command("add-labeler", add_labeler, "register a person and print their sign-in token (once)")
    a.add_argument("name")
    for name, fn, text in (("rotate", rotate, "give a person a new token (the old one stops working)"),
                           ("revoke", revoke, "stop a person's token from signing in (their labels are kept)"),
                           ("remove-labeler", remove_labeler, "delete a person and their labels")):
        command(name, fn, text).add_argument("name")
    command("admin-token", admin_token, "print a new admin token for the researcher's page /admin")

    s = command("serve", serve, "run the labeling web app")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--log-level", default="info")
    s.add_argument("--openapi", action="store_true", help="also serve the API's description at /openapi.json")

    t = command("stats", stats, "per-labeler agreement (gold, peers), time per item, late labels")
    t.add_argument("--json", help="also write the numbers to this JSON file")

    e = command("export", export, "write the labels as the comparison JSONL that algo=reward_model reads")
    e.add_argument("--out", required=True)
    e.add_argument("--no-gold", action="store_true", help="leave out labels of gold items")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except sqlite3.DatabaseError as err:  # damage found past the file's header, mid-command
        print(f"error: the label store of {args.dir} is damaged ({err}); restore labels.sqlite from a backup",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
