"""notebooks/launch.ipynb, run headless as a person runs it (nbclient, every cell in order), with no network:

the repo URL is this checkout (cloned from disk), the tunnel is off, the checkpoint URL points at a tiny model
served on 127.0.0.1 (allowed by --allow-private-downloads), set-up runs in a fresh venv that sees this test's
packages (as a Colab or RunPod image holds them, so it installs nothing). The app starts with the API; the test asks it for
a picture, then the notebook's last cell stops it. Settings reach the notebook through its SDN_* environment
variables, which the form cell reads (they win over the form fields).
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "launch.ipynb"


def test_the_notebook_is_valid_and_its_form_has_the_fields_people_fill():
    nbformat = pytest.importorskip("nbformat", reason="nbformat comes with nbclient (requirements-test.txt)")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and "What it does" in nb.cells[0].source
    source = "\n".join(cell.source for cell in nb.cells)
    for field in ("REPO_URL", "CHECKPOINT_URLS", "LORA_URLS", "LOGIN_USER", "LOGIN_PASSWORD", "TUNNEL",
                  "NGROK_TOKEN"):
        assert f"{field} = " in source and "#@param" in source.split(f"{field} = ", 1)[1].split("\n", 1)[0], field
    assert "import google.colab" not in source  # runs on RunPod's Jupyter too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def model_server(tmp_path):
    """A tiny SD1 checkpoint served over HTTP on loopback, as a download site would serve it."""
    from tiny_models import write_tiny_checkpoint

    folder = tmp_path / "site"
    folder.mkdir()
    write_tiny_checkpoint(folder / "notebook-tiny.safetensors", "sd1", seed=5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/notebook-tiny.safetensors"
    server.shutdown()


def _fresh_venv_seeing_this_environment(path):
    """A new virtual environment whose Python also sees this test's packages (a .pth file naming their folders),
    as Colab's image or a RunPod template would already hold them: set-up runs its real venv path there and must
    find nothing to install, instead of fetching gigabytes."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    inner = subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    folders = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *site.getsitepackages()])
    (Path(inner) / "_this_test_environment.pth").write_text("\n".join(folders) + "\n")
    return path


def test_the_notebook_clones_installs_launches_serves_an_image_and_stops(tmp_path, model_server, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="pip install -r requirements-test.txt (nbclient, ipykernel)")
    pytest.importorskip("ipykernel", reason="pip install -r requirements-test.txt (nbclient, ipykernel)")
    import nbformat

    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("the notebook clones this checkout, which is not a git repository here")
    port = _free_port()
    data = tmp_path / "data"
    venv = _fresh_venv_seeing_this_environment(tmp_path / "venv")
    env = {
        "SDN_REPO_URL": str(REPO),  # git clones from the disk: no network
        "SDN_INSTALL_DIR": str(tmp_path / "clone"),
        "SDN_VENV_DIR": str(venv),
        "SDN_CHECKPOINT_URLS": model_server,
        "SDN_TUNNEL": "none",
        "SDN_LOGIN_PASSWORD": "",
        "SDN_PORT": str(port),
        "SDN_EXTRA_ARGS": f"--allow-private-downloads --data-dir {data} --disable-console-progressbars",
        "SDN_START_TIMEOUT": "150",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("COMMANDLINE_ARGS", raising=False)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    *start_cells, stop_cell = nb.cells
    started = time.monotonic()
    # The kernel (and so every cell's sys.executable, launch.py included) is the fresh venv's Python.
    spec = tmp_path / "jupyter" / "kernels" / "fresh-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh venv", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    client = nbclient.NotebookClient(nbformat.v4.new_notebook(cells=start_cells, metadata=nb.metadata),
                                     timeout=240, kernel_name="fresh-venv",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        try:
            for index, cell in enumerate(client.nb.cells):
                client.execute_cell(cell, index)
            installing = "".join(o.get("text", "") for o in client.nb.cells[2].outputs)
            assert "Installing requirements" not in installing, installing  # nothing was missing in the venv
            client.nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
            client.execute_cell(client.nb.cells[-1], len(client.nb.cells) - 1)
            assert str(venv) in "".join(o.get("text", "") for o in client.nb.cells[-1].outputs)  # ran in the venv
            client.nb.cells.pop()
            printed = "".join(o.get("text", "") for o in client.nb.cells[-1].outputs)
            assert f"Local: http://127.0.0.1:{port}" in printed and "Public link: off" in printed

            body = json.dumps({"prompt": "a red circle", "steps": 2, "width": 64, "height": 64,
                               "sampler_name": "Euler", "seed": 1}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/sdapi/v1/txt2img", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = json.load(response)
            from PIL import Image

            image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
            assert image.size == (64, 64)
            assert "notebook-tiny" in json.loads(answer["info"])["sd_model_name"]  # the downloaded checkpoint
            assert (data / "models" / "Stable-diffusion" / "notebook-tiny.safetensors").is_file()
        finally:
            client.nb.cells.append(stop_cell)
            client.execute_cell(stop_cell, len(client.nb.cells) - 1)
    assert "Stopped." in "".join(o.get("text", "") for o in stop_cell.outputs)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    print(f"notebook run: {time.monotonic() - started:.1f}s")
