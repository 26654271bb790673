"""`agent-runtime config check|keys`: validate a config file, list every key."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="validate a config file or list every config key")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    c = csub.add_parser("check", help="validate a YAML config (keys, values, installed plugin names); prints 'ok' or a one-line error")
    c.add_argument("file", type=Path)
    c.set_defaults(func=_check)
    k = csub.add_parser("keys", help="every key with its default and meaning")
    k.add_argument("--markdown", action="store_true", help="as a Markdown table (docs/configuration.md)")
    k.set_defaults(func=_keys)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


def _check(args: argparse.Namespace) -> int:
    from agent_runtime.config import load_config
    from agent_runtime.errors import ConfigError
    from agent_runtime.plugins import check_plugins

    config = load_config(args.file)
    try:
        check_plugins(config)
    except ConfigError as exc:
        raise ConfigError(f"{args.file}: {exc}") from None
    print(f"{args.file}: ok")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from agent_runtime.config import describe_config

    rows = describe_config()
    if args.markdown:
        print("| key | default | meaning |\n|---|---|---|")
        for key, default, desc in rows:
            print(f"| `{key}` | `{default.replace('|', chr(92) + '|')}` | {desc} |")
    else:
        width = max(len(r[0]) for r in rows)
        for key, default, desc in rows:
            print(f"{key:<{width}}  {default:<12}  {desc}")
    return 0
