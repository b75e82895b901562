"""Public links: the login rule for them, and the ngrok tunnel (gradio's --share link is opened by gradio).

A public link (--share, --ngrok) puts the server on the internet. It refuses to start without a login
(--gradio-auth / --gradio-auth-path) unless --insecure-public says that is meant. The API (--api, --nowebui)
behind a public link needs credentials too: --api-auth, or else it takes the UI's --gradio-auth credentials, so
a notebook needs one login for both (a person who wants the API open says --insecure-public).

ngrok comes from pyngrok, imported only when --ngrok is given (requirements-notebook.txt); pyngrok fetches the
ngrok agent on first use, which is a download the person asked for by giving the flag.
"""

from __future__ import annotations

import argparse
from typing import Any

NOTEBOOK_REQUIREMENTS = "pip install -r requirements-notebook.txt"


class PublicLinkError(ValueError):
    """A public link that may not start as asked; the message says which flag to add."""


def public_flags(cmd_opts: argparse.Namespace) -> list[str]:
    """The flags that make a public link, as a person typed them."""
    flags = []
    if getattr(cmd_opts, "share", False):
        flags.append("--share")
    if getattr(cmd_opts, "ngrok", None):
        flags.append("--ngrok")
    return flags


def _ui_credentials(cmd_opts: argparse.Namespace) -> list[tuple[str, str]]:
    from modules.ui.server import read_auth  # only the parser; it raises ValueError naming a bad entry

    return read_auth(cmd_opts)


def check_public_link(cmd_opts: argparse.Namespace) -> None:
    """Raise PublicLinkError when a public link would start without a login; otherwise give the API the UI's
    credentials when it has none of its own. A no-op without a public link or with --insecure-public."""
    flags = public_flags(cmd_opts)
    if not flags or getattr(cmd_opts, "insecure_public", False):
        return
    named = " and ".join(flags)
    if "--share" in flags and getattr(cmd_opts, "nowebui", False):
        raise PublicLinkError("--share makes a gradio link to the web UI, and --nowebui has none: use --ngrok TOKEN")
    credentials = _ui_credentials(cmd_opts)
    api = bool(getattr(cmd_opts, "api", False) or getattr(cmd_opts, "nowebui", False))
    if not credentials and not getattr(cmd_opts, "nowebui", False):
        raise PublicLinkError(
            f"{named} makes a public link, and the web UI has no login: add --gradio-auth user:password (or "
            "--gradio-auth-path FILE), or --insecure-public to let anyone with the link in")
    if api and not getattr(cmd_opts, "api_auth", None):
        if not credentials:
            raise PublicLinkError(
                f"{named} makes a public link, and the API has no login: add --api-auth user:password (or "
                "--gradio-auth, which the API then uses too), or --insecure-public to let anyone use it")
        cmd_opts.api_auth = ",".join(f"{user}:{password}" for user, password in credentials)
        print("The API behind the public link uses the --gradio-auth credentials (HTTP Basic); "
              "--api-auth sets others.")


def _pyngrok() -> tuple[Any, Any]:
    try:
        from pyngrok import conf, ngrok
    except ImportError:
        raise PublicLinkError(f"--ngrok needs the pyngrok package: {NOTEBOOK_REQUIREMENTS}") from None
    return conf, ngrok


def ngrok_options(cmd_opts: argparse.Namespace) -> dict[str, Any]:
    options = getattr(cmd_opts, "ngrok_options", None) or {}
    if not isinstance(options, dict):
        raise PublicLinkError("--ngrok-options must be a JSON object, e.g. '{\"domain\": \"me.ngrok.app\"}'")
    return dict(options)


def open_ngrok(cmd_opts: argparse.Namespace, port: int) -> str:
    """Open the ngrok tunnel to this server's port; returns its public URL (printed too)."""
    conf, ngrok = _pyngrok()
    config = conf.PyngrokConfig(auth_token=cmd_opts.ngrok, region=getattr(cmd_opts, "ngrok_region", "") or None)
    tunnel = ngrok.connect(f"127.0.0.1:{port}", pyngrok_config=config, **ngrok_options(cmd_opts))
    url = str(tunnel.public_url)
    print(f"* Public link (ngrok): {url}", flush=True)
    return url
