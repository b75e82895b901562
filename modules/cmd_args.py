"""Command-line flags, with the names, types and defaults of A1111's `modules/cmd_args.py`.

Every A1111 flag parses, so existing command lines and `COMMANDLINE_ARGS` keep working. Flags that do
something in this project are listed in `EFFECTIVE_FLAGS`; the others say "(not yet effective)" in `--help`
and the launcher prints a note when one is set. Extensions add their own flags to `parser` (preload.py).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from modules import paths

NOT_EFFECTIVE = "(not yet effective)"

# Flags that act now. Later work adds to this set (or calls mark_effective) as features land.
EFFECTIVE_FLAGS: set[str] = {
    "--data-dir",
    "--models-dir",
    "--ckpt",
    "--ckpt-dir",
    "--vae-dir",
    "--vae-path",
    "--no-half",
    "--no-half-vae",
    "--precision",
    "--use-cpu",
    "--skip-install",
    "--xformers",
    "--opt-sdp-attention",
    "--opt-sdp-no-mem-attention",  # modules/attention_optimization.py
    "--disable-opt-split-attention",
    "--force-enable-xformers",
    "--exit",
    "--dump-sysinfo",  # modules/sysinfo.py
    "--ui-settings-file",  # modules/shared.py: where config.json is read and saved
    "--ui-config-file",  # modules/ui/ui_config.py: ui-config.json, the page's defaults and limits
    "--api-server-stop",  # modules/api/server_control.py
    "--disable-nan-check",  # modules/devices.py test_for_nans, after each batch's sampling
    "--skip-load-model-at-start",
    "--no-hashing",
    "--no-prompt-history",  # params.txt (modules/processing.py, read by the ↙️ button in modules/ui/paste.py)
    "--loglevel",
    "--filenames-max-length",
    "--device-id",
    "--ray",  # several GPUs and hosts (modules/serve)
    "--ray-replicas",
    "--ray-address",
    # model upscalers (modules/upscaler_models.py): each folder is listed too
    "--esrgan-models-path",
    "--realesrgan-models-path",
    "--dat-models-path",
    "--swinir-models-path",
    "--scunet-models-path",
    "--hat-models-path",
    # extra networks (modules/networks, modules/textual_inversion.py)
    "--lora-dir",
    "--lyco-dir-backcompat",
    "--embeddings-dir",
    "--controlnet-dir",  # modules/controlnet/files.py, as sd-webui-controlnet's preload.py declared it
    # face restoration (modules/face_restoration_models.py)
    "--codeformer-models-path",
    "--gfpgan-models-path",
    # the web UI (modules/ui)
    "--listen",
    "--port",
    "--server-name",
    "--share",
    "--gradio-auth",
    "--gradio-auth-path",
    "--autolaunch",
    "--theme",
    "--subpath",
    "--tls-keyfile",
    "--tls-certfile",
    "--disable-tls-verify",
    "--gradio-allowed-path",
    "--cors-allow-origins",
    "--cors-allow-origins-regex",
    "--allowed-hosts",
    "--max-upload-size",
    "--hide-ui-dir-config",
    "--batch-dirs",  # img2img Batch folders (modules/batch_folders.py)
    "--allow-batch-dirs-when-listening",
    "--freeze-settings",
    "--freeze-settings-in-sections",
    "--freeze-specific-settings",
    "--ui-debug-mode",
    # the HTTP API, wired by webui.py (modules/api)
    "--api",
    "--api-auth",
    "--api-log",
    "--nowebui",
    "--no-bytecode-cache",  # launch.py (modules/bytecode_cache.py)
    "--timeout-keep-alive",  # the API-only server's uvicorn (modules/api/server.py)
    # extensions (modules/extensions.py, modules/extension_manager.py)
    "--disable-all-extensions",
    "--disable-extra-extensions",
    "--enable-insecure-extension-access",
    "--update-all-extensions",  # launch.py: fetch + reset each enabled git extension before the installers run
    # model downloads a person asks for (modules/downloads.py)
    "--download",
    "--allow-private-downloads",
    "--download-max-gb",
    # low VRAM: offloading installed when a model loads (modules/models/offload.py)
    "--medvram",
    "--medvram-sdxl",
    "--lowvram",
}

# Values that must never be shown back (API /cmd-flags, logs, sysinfo): credentials and TLS material.
SECRET_FLAGS: set[str] = {
    "--api-auth",
    "--gradio-auth",
    "--ngrok",
    "--ngrok-options",
    "--download",  # a URL may carry a token (?token=...)
    "--tls-keyfile",
    "--tls-certfile",
}

# Consumed by the shell launcher (webui.sh -f lets it run as root), so setting it deserves no note.
_HANDLED_OUTSIDE: set[str] = {"-f"}


def _path_defaults(data_dir: str, models_dir: str | None) -> dict[str, str]:
    """Defaults of path flags that follow --data-dir / --models-dir, as in A1111."""
    data = os.path.abspath(data_dir)
    models = os.path.abspath(models_dir) if models_dir else os.path.join(data, "models")
    return {
        "embeddings_dir": os.path.join(data, "embeddings"),
        "hypernetwork_dir": os.path.join(models, "hypernetworks"),
        "codeformer_models_path": os.path.join(models, "Codeformer"),
        "gfpgan_models_path": os.path.join(models, "GFPGAN"),
        "esrgan_models_path": os.path.join(models, "ESRGAN"),
        "bsrgan_models_path": os.path.join(models, "BSRGAN"),
        "realesrgan_models_path": os.path.join(models, "RealESRGAN"),
        "dat_models_path": os.path.join(models, "DAT"),
        "swinir_models_path": os.path.join(models, "SwinIR"),
        "scunet_models_path": os.path.join(models, "ScuNET"),
        "hat_models_path": os.path.join(models, "HAT"),
        "lora_dir": os.path.join(models, "Lora"),
        "lyco_dir_backcompat": os.path.join(models, "LyCORIS"),
        "ui_config_file": os.path.join(data, "ui-config.json"),
        "ui_settings_file": os.path.join(data, "config.json"),
    }


def _json_options(text: str) -> Any:
    # A custom error keeps the value (it may hold an ngrok token) out of the message.
    try:
        return json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at position {e.pos})") from None


class _HelpFormatter(argparse.HelpFormatter):
    """Keeps "(not yet effective)" on one line so it stays easy to spot and to grep."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        glued = NOT_EFFECTIVE.replace(" ", "\x00")
        lines = super()._split_lines(text.replace(NOT_EFFECTIVE, glued), width)
        return [line.replace("\x00", " ") for line in lines]


class _Parser(argparse.ArgumentParser):
    """argparse, with a "did you mean" hint for misspelled flags."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unrecognized_message(extras))
        return ns

    def _unrecognized_message(self, extras: list[str]) -> str:
        message = f"unrecognized arguments: {' '.join(extras)}"
        known = [s for action in self._actions for s in action.option_strings]
        for extra in extras:
            if not extra.startswith("-"):
                continue
            name = extra.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
            if close:
                message += f"; did you mean {close[0]} instead of {name}?"
        return message


# "resolve" lets an extension's preload.py re-declare a flag we also declare (e.g. --lora-dir) instead of crashing.
parser = _Parser(
    prog="launch.py",
    usage="%(prog)s [flags]  (launch.py --help lists them)",  # the full usage would bury error messages
    description="AUTOMATIC1111-compatible Stable Diffusion web UI. Flags are also read from COMMANDLINE_ARGS.",
    formatter_class=_HelpFormatter,
    conflict_handler="resolve",
)
_core_actions: list[argparse.Action] = []


def _add(*flags: str, help: str, **kwargs: Any) -> None:
    effective = any(flag in EFFECTIVE_FLAGS for flag in flags)
    text = help if effective or help is argparse.SUPPRESS else f"{help} {NOT_EFFECTIVE}"
    _core_actions.append(parser.add_argument(*flags, help=text, **kwargs))


def _flag(name: str, help: str) -> None:
    _add(name, help=help, action="store_true")


_initial_paths = _path_defaults(paths.script_path, None)


def _path(name: str, help: str) -> None:
    dest = name.lstrip("-").replace("-", "_")
    _add(name, help=help, type=str, default=_initial_paths[dest])


# --- launcher (launch.py) ---
_add("-f", help=argparse.SUPPRESS, action="store_true")
_flag("--update-all-extensions", "launch.py: download updates for all extensions when starting")
_flag("--skip-python-version-check", "launch.py: do not check the Python version")
_flag("--skip-torch-cuda-test", "launch.py: do not check that torch can use a CUDA GPU")
_flag("--reinstall-xformers", "launch.py: reinstall xformers (remove once used)")
_flag("--reinstall-torch", "launch.py: reinstall torch (remove once used)")
_flag("--update-check", "launch.py: check for a newer version of the web UI at start-up")
_flag("--test-server", "configure the server for running tests")
_flag("--log-startup", "launch.py: print a detailed log of what happens at start-up")
_flag("--skip-prepare-environment", "launch.py: skip all environment preparation")
_flag("--skip-install", "launch.py: skip installation of packages")
_flag("--dump-sysinfo", "launch.py: write a sysinfo file (without extensions or settings) and quit")
_add("--loglevel", help="log level; one of CRITICAL, ERROR, WARNING, INFO, DEBUG", type=str, default=None)
_flag("--do-not-download-clip", "do not download the CLIP model even if it is not in the checkpoint")
_flag("--exit", "terminate after installation")
_flag("--uv", "launch.py: install packages with uv instead of pip")

# --- paths ---
_add("--data-dir", help="base path where all user data is stored", type=str, default=paths.script_path)
_add("--models-dir", help="base path where models are stored; overrides --data-dir", type=str, default=None)
_add("--config", help="path to a model config (yaml) used when a checkpoint has none",
     type=str, default=os.path.join(paths.configs_path, "v1-inference.yaml"))
_add("--ckpt", help="path to a Stable Diffusion checkpoint; if it exists it is added to the list and loaded",
     type=str, default=os.path.join(paths.script_path, "model.ckpt"))
_add("--ckpt-dir", help="path to a directory with Stable Diffusion checkpoints", type=str, default=None)
_add("--vae-dir", help="path to a directory with VAE files", type=str, default=None)
_add("--vae-path", help="checkpoint to use as VAE; setting this disables all VAE settings", type=str, default=None)
_add("--gfpgan-dir", help="GFPGAN directory", type=str, default="./GFPGAN")
_add("--gfpgan-model", help="GFPGAN model file name", type=str, default=None)
_path("--embeddings-dir", "embeddings directory for textual inversion")
_add("--textual-inversion-templates-dir", help="directory with textual inversion templates", type=str,
     default=os.path.join(paths.script_path, "textual_inversion_templates"))
_path("--hypernetwork-dir", "hypernetwork directory")
_add("--localizations-dir", help="localizations directory", type=str,
     default=os.path.join(paths.script_path, "localizations"))
_path("--codeformer-models-path", "path to the directory with CodeFormer model files")
_path("--gfpgan-models-path", "path to the directory with GFPGAN model files")
_path("--esrgan-models-path", "path to the directory with ESRGAN model files")
_path("--bsrgan-models-path", "path to the directory with BSRGAN model files")
_path("--realesrgan-models-path", "path to the directory with RealESRGAN model files")
_path("--dat-models-path", "path to the directory with DAT model files")
_path("--swinir-models-path", "path to the directory with SwinIR model files")
_path("--scunet-models-path", "path to the directory with ScuNET model files")
_path("--hat-models-path", "path to the directory with HAT model files")
_add("--clip-models-path", help="path to the directory with CLIP model files", type=str, default=None)
_path("--lora-dir", "path to the directory with LoRA networks")
_path("--lyco-dir-backcompat", "path to the directory with LyCORIS networks (for backwards compatibility)")
_add("--controlnet-dir", help="path to a directory with ControlNet models, scanned besides models/ControlNet",
     type=str, default=None)
_add("--styles-file", help="path or wildcard path of a styles file; may be given several times",
     type=str, action="append", default=[])
_path("--ui-config-file", "file to read UI defaults and element settings from")
_path("--ui-settings-file", "file to read and save settings to")

# --- precision and memory ---
_flag("--no-half", "do not switch the model to 16-bit floats")
_flag("--no-half-vae", "do not switch the VAE model to 16-bit floats")
_add("--precision", help="evaluate at this precision", type=str, choices=["full", "half", "autocast"],
     default="autocast")
_flag("--upcast-sampling", "upcast sampling; no effect with --no-half; gives results like --no-half with less memory")
_flag("--opt-channelslast", "change the memory layout of the model to channels-last")
_flag("--disable-nan-check", "do not check whether produced images or latents are all NaN")
_flag("--medvram", "split the model in three parts and keep only one on the GPU at a time, to save VRAM")
_flag("--medvram-sdxl", "like --medvram, but only for SDXL models")
_flag("--lowvram", "split the UNet into many modules and keep only one on the GPU at a time, to save more VRAM")
_flag("--lowram", "load checkpoint weights to VRAM instead of RAM")

# --- cross attention ---
_flag("--xformers", "enable xformers for cross attention layers")
_flag("--force-enable-xformers", "enable xformers for cross attention layers even if the checks fail")
_flag("--xformers-flash-attention", "enable xformers with Flash Attention (SD2.x and variants only)")
_flag("--opt-split-attention", "prefer the Doggettx split cross attention optimization")
_flag("--opt-sub-quad-attention", "prefer the memory-efficient sub-quadratic cross attention optimization")
_add("--sub-quad-q-chunk-size", help="query chunk size for the sub-quadratic optimization", type=int, default=1024)
_add("--sub-quad-kv-chunk-size", help="key/value chunk size for the sub-quadratic optimization", type=int,
     default=None)
_add("--sub-quad-chunk-threshold", help="percentage of VRAM use above which the sub-quadratic optimization chunks",
     type=int, default=None)
_flag("--opt-split-attention-invokeai", "prefer the InvokeAI cross attention optimization")
_flag("--opt-split-attention-v1", "prefer an older split attention that does not use all memory")
_flag("--opt-sdp-attention", "prefer scaled dot product cross attention (torch 2.0+)")
_flag("--opt-sdp-no-mem-attention", "prefer scaled dot product cross attention without memory-efficient kernels")
_flag("--disable-opt-split-attention", "prefer no cross attention optimization")

# --- devices ---
_add("--use-cpu", help="use the CPU as torch device for these modules (all, sd, interrogate, ...)", nargs="+",
     default=[], type=str.lower)
_flag("--use-ipex", "use Intel XPU as torch device")
_add("--device-id", help="default CUDA device to use (CUDA_VISIBLE_DEVICES may also be needed)", type=str,
     default=None)
_flag("--disable-model-loading-ram-optimization", "disable the RAM optimization used while loading a model")
# several GPUs and hosts behind this server (modules/serve; needs: pip install -r requirements-ray.txt)
_flag("--ray", "run jobs on replicas of the engine, one per GPU, on a Ray Serve deployment (this machine, or the "
      "Ray cluster of --ray-address); the UI and API stay here")
_add("--ray-replicas", help="with --ray: how many replicas (default: one per GPU of the cluster; one without GPUs)",
     type=int, default=None)
_add("--ray-address", help="with --ray: join this Ray cluster (HOST:PORT of its head, or auto) instead of starting "
     "one on this machine", type=str, default=None)

# --- server and UI ---
_flag("--listen", "listen on 0.0.0.0 so the server answers on the network")
_add("--port", help="server port (7860 by default, 7861 with --nowebui); ports below 1024 need admin rights",
     type=int, default=None)
_add("--server-name", help="server host name to listen on", type=str, default=None)
_flag("--share", "create a public gradio share link")
_add("--ngrok", help="ngrok auth token; opens an ngrok tunnel to the server (needs requirements-notebook.txt)",
     type=str, default=None)
_add("--ngrok-region", help="ngrok region (us, eu, ap, au, sa, jp, in); ngrok's nearest when unset", type=str,
     default="")
_flag("--insecure-public", "allow a public link (--share, --ngrok) without --gradio-auth, and its API without "
      "--api-auth: anyone with the link can use the server")
_add("--ngrok-options", help='options for ngrok as a JSON object, e.g. \'{"basic_auth": "user:password"}\'',
     type=_json_options, default=None)
_add("--tls-keyfile", help="TLS key file; enables TLS together with --tls-certfile", type=str, default=None)
_add("--tls-certfile", help="TLS certificate file; enables TLS together with --tls-keyfile", type=str, default=None)
_add("--disable-tls-verify", help="allow self-signed TLS certificates", action="store_false")
_add("--subpath", help="serve the UI under this sub-path (behind a reverse proxy)", type=str, default=None)
_flag("--autolaunch", "open the UI in the system's default browser at start-up")
_add("--theme", help="launch the UI with the light or dark theme", type=str, default=None)
_add("--cors-allow-origins", help="comma-separated origins allowed to make cross-origin requests", type=str,
     default=None)
_add("--cors-allow-origins-regex", help="regular expression of origins allowed to make cross-origin requests",
     type=str, default=None)
_add("--allowed-hosts", help="comma-separated host names the server answers to besides loopback, --server-name and "
     "(with --listen) IP addresses: the public name of a tunnel or reverse proxy; '.example.com' allows its "
     "subdomains, '*' any name (turns off the DNS-rebinding check)", type=str, default=None)
_add("--max-upload-size", help="largest request body the web UI accepts, in MB (file uploads); the API's limit "
     "is the api_max_body_mb setting", type=float, default=100.0)
_flag("--enable-insecure-extension-access", "keep the extensions tab working even when the server is public")
_flag("--allow-code", "allow running custom code from the web UI")
_flag("--administrator", "administrator rights")
_flag("--hide-ui-dir-config", "hide directory settings in the UI")
_add("--batch-dirs", help="comma-separated folders that img2img Batch may read and write, besides the data dir; "
     "may be given several times", type=str, action="append", default=[])
_flag("--allow-batch-dirs-when-listening", "keep img2img Batch from server folders working when other machines "
      "can reach the server (--listen, --share, --ngrok, --server-name)")
_flag("--ui-debug-mode", "do not load a model, to start the UI quickly")
_flag("--use-textbox-seed", "use a textbox for seeds in the UI (no up/down arrows, long seeds)")
_flag("--disable-console-progressbars", "do not print progress bars to the console")
_flag("--no-progressbar-hiding", "do not hide the progress bar in the UI")
_flag("--no-prompt-history", "do not save the last prompt and restore it on reload")

# --- API ---
_flag("--api", "start the API together with the UI")
_add("--api-auth", help="credentials for the API, as user:password[,user2:password2]", type=str, default=None)
_flag("--api-log", "log every API request")
_flag("--nowebui", "start only the API, without the UI")
_flag("--no-bytecode-cache", "where Python is told not to write bytecode caches (PYTHONDONTWRITEBYTECODE), do not "
      "keep them under <data dir>/cache/bytecode either (every start then compiles the imported modules' source)")
_flag("--api-server-stop", "allow stopping or restarting the server through the API")
_add("--timeout-keep-alive", help="seconds uvicorn keeps idle connections open", type=int, default=30)

# --- gradio ---
_add("--gradio-auth", help="credentials for the UI, as user:password[,user2:password2]", type=str, default=None)
_add("--gradio-auth-path", help="file(s) with credentials in the --gradio-auth format, comma-separated", type=str,
     default=None)
_flag("--gradio-debug", "launch gradio in debug mode")
_add("--gradio-allowed-path", help="extra path gradio may serve files from; may be given several times",
     action="append", default=[])
_flag("--no-gradio-queue", "disable the gradio queue; the page uses http requests instead of websockets")

# --- extensions, settings and misc ---
_flag("--disable-all-extensions", "run no extensions, whatever the settings say")
_flag("--disable-extra-extensions", "run only built-in extensions, whatever the settings say")
_flag("--disable-safe-unpickle", "do not check PyTorch models for malicious code")
_flag("--no-hashing", "do not hash checkpoints (faster loading)")
_flag("--freeze-settings", "make all settings read-only")
_add("--freeze-settings-in-sections", help="comma-separated settings sections to make read-only", type=str,
     default=None)
_add("--freeze-specific-settings", help="comma-separated settings to make read-only", type=str, default=None)
_flag("--skip-load-model-at-start", "do not load a model at start-up")
_flag("--skip-version-check", "do not check versions of torch and xformers")
_flag("--no-download-sd-model", "do not download an SD1.5 model when none is found")
_add("--download", help="download a model before the model folders are scanned; may be given several times: "
     "[TYPE=]URL or [TYPE=]hf:OWNER/REPO/FILE[@REVISION]; TYPE is checkpoint (default), lora, vae, controlnet, "
     "embedding, esrgan, realesrgan, swinir, dat, hat or scunet; a URL may end in #sha256=HEX",
     type=str, action="append", default=[])
_flag("--allow-private-downloads", "let model downloads reach this machine and private networks (and use plain "
      "http there); off by default so a URL cannot make the server fetch from its own network")
_add("--download-max-gb", help="largest model file a download may fetch, in GB", type=float, default=30.0)
_flag("--unix-filenames-sanitization", "allow any character in file names except '/'")
_add("--filenames-max-length", help="maximal length of file names of saved images", type=int, default=128)

# --- kept so old command lines still parse; they do nothing, in A1111 too ---
_add("--max-batch-count", help="does not do anything", type=int, default=16)
_flag("--always-batch-cond-uncond", "does not do anything")
_flag("--unload-gfpgan", "does not do anything")
_flag("--deepdanbooru", "does not do anything")
_flag("--show-negative-prompt", "does not do anything")
_add("--gradio-img2img-tool", help="does not do anything", type=str)
_add("--gradio-inpaint-tool", help="does not do anything", type=str)
_flag("--enable-console-prompts", "does not do anything")
_flag("--gradio-queue", "does not do anything")
_flag("--add-stop-route", "does not do anything")

_PATH_DESTS = tuple(_initial_paths)


def _flag_name(action: argparse.Action) -> str:
    """The long spelling of a flag (what people type and what EFFECTIVE_FLAGS holds)."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return longs[0] if longs else action.option_strings[0]


def _env_args(environ: Mapping[str, str]) -> list[str]:
    text = environ.get("COMMANDLINE_ARGS", "")
    try:
        return shlex.split(text)
    except ValueError as e:  # unbalanced quotes
        parser.error(f"COMMANDLINE_ARGS could not be split into arguments: {e}")


def parse_args(
    argv: list[str] | None = None, environ: Mapping[str, str] | None = None, strict: bool = True
) -> argparse.Namespace:
    """Parse COMMANDLINE_ARGS followed by argv (so argv wins for repeated single-value flags).

    argv defaults to sys.argv[1:], environ to os.environ. With strict=False unknown flags are ignored instead of
    exiting with code 2 (used before extensions have declared their flags, and by install.py scripts).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    args = _env_args(environ) + argv

    # Path defaults follow --data-dir/--models-dir; a sentinel tells "not given" from "given the default".
    unset = object()
    start = argparse.Namespace(**dict.fromkeys(_PATH_DESTS, unset))
    if strict:
        ns = parser.parse_args(args, start)
    else:
        ns, _ = parser.parse_known_args(args, start)
    for dest, value in _path_defaults(ns.data_dir, ns.models_dir).items():
        if getattr(ns, dest) is unset:
            setattr(ns, dest, value)
    return ns


def defaults_for(ns: argparse.Namespace) -> dict[str, Any]:
    """Default value of every core flag, given the data/models dirs chosen in ns."""
    defaults = {action.dest: action.default for action in _core_actions}
    defaults.update(_path_defaults(getattr(ns, "data_dir", paths.script_path), getattr(ns, "models_dir", None)))
    return defaults


def not_yet_effective(ns: argparse.Namespace) -> list[str]:
    """Flags the user set (value differs from its default) that do nothing yet. Extension flags are not ours."""
    defaults = defaults_for(ns)
    found = []
    for action in _core_actions:
        if not action.option_strings or action not in parser._actions:
            continue  # an extension re-declared it, so it is no longer ours to judge
        flag = _flag_name(action)
        if flag in EFFECTIVE_FLAGS or flag in _HANDLED_OUTSIDE:
            continue
        if getattr(ns, action.dest, defaults[action.dest]) != defaults[action.dest]:
            found.append(flag)
    return found


def mark_effective(flags: Iterable[str]) -> None:
    """Record that these flags now act, and drop the "(not yet effective)" note from their help."""
    flags = set(flags)
    EFFECTIVE_FLAGS.update(flags)
    for action in parser._actions:
        if action.help and set(action.option_strings) & flags:
            action.help = action.help.removesuffix(f" {NOT_EFFECTIVE}")


def redacted(ns: argparse.Namespace) -> dict[str, Any]:
    """vars(ns) with the values of SECRET_FLAGS that are set replaced by "<redacted>"."""
    secret_dests = {a.dest for a in parser._actions if set(a.option_strings) & SECRET_FLAGS}
    return {k: ("<redacted>" if k in secret_dests and v else v) for k, v in vars(ns).items()}
