"""SAPIEN's BRDF lookup table, computed once per machine instead of once per process.

Every SAPIEN camera shader samples a 512x512 split-sum BRDF table (``samplerBRDFLUT``). When a
camera has no texture of that name, SAPIEN's renderer (svulkan2's
``SVResourceManager::getDefaultBRDFLUT``) computes it with a compute shader at the first
picture of each process: about 6-10 s on lavapipe, the CPU Vulkan driver, which is most of a
smoke evaluation job. The renderer only computes it when no texture named ``BRDFLUT`` was
given, so this module

- extracts the table SAPIEN itself computes, once per machine, in a subprocess: a camera whose
  shader pack is SAPIEN's own ``minimal`` pack with the composite pass replaced by
  ``texelFetch(samplerBRDFLUT, ...)`` renders it texel by texel into a float32 target (the
  table is ``R16G16_SFLOAT``, so every value is exact);
- caches it as ``.npy`` under ``$PAR_HARNESS_CACHE`` (default ``$XDG_CACHE_HOME/par-harness``
  or ``~/.cache/par-harness``), keyed by SAPIEN's version and the Vulkan device summary;
- hands it to each camera as that texture, in the same format with the same sampler (linear,
  clamped to the edge).

The images are bit-identical to SAPIEN's own (``tests/test_brdf_lut.py`` renders every task's
cameras both ways). Where extraction fails (another SAPIEN, no shader pack), SAPIEN computes
the table itself as before, with a warning. ``PAR_HARNESS_BRDF_LUT=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SIZE = 512  # svulkan2's shader::generateBRDFLUT(512)
FORMAT = "r16g16sfloat"  # vk::Format::eR16G16Sfloat, as svulkan2 creates it
TEXTURE_NAME = "BRDFLUT"  # the shaders' samplerBRDFLUT
ENV_SWITCH = "PAR_HARNESS_BRDF_LUT"
EXTRACT_TIMEOUT_S = 300
# an extraction that timed out is tried again after this long (one that failed: only once the
# .failed file is deleted)
RETRY_AFTER_TIMEOUT_S = 3600
TIMEOUT_MARK = "timed out after"

_state: dict = {}  # this process: "texture" (a RenderTexture) or "failed"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    if os.environ.get("PAR_HARNESS_CACHE"):
        return Path(os.environ["PAR_HARNESS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "par-harness"


def cache_path() -> Path:
    """Where this machine's table lives: one file per SAPIEN version and Vulkan device summary."""
    import sapien
    import sapien.render

    key = f"{sapien.__version__}\n{sapien.render.get_device_summary()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / f"brdf_lut-sapien{sapien.__version__}-{digest}.npy"


def valid(table) -> bool:
    return (isinstance(table, np.ndarray) and table.shape == (SIZE, SIZE, 2)
            and table.dtype == np.float16 and bool(np.isfinite(table).all()))


def load(path: Path) -> np.ndarray | None:
    """The cached table, or None (missing, or not a table: then it is extracted again)."""
    if not path.exists():
        return None
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("BRDF table cache %s is unreadable (%s); extracting it again", path, exc)
        return None
    if not valid(table):
        log.warning("BRDF table cache %s is not a %dx%dx2 float16 table; extracting it again",
                    path, SIZE, SIZE)
        return None
    return table


def extract(path: Path) -> None:
    """Render SAPIEN's own table into ``path`` (run in a subprocess: the shader pack and the
    picture format set here are process-wide)."""
    import sapien
    import sapien.render as render

    shaders = Path(sapien.__file__).parent / "vulkan_shader"
    with tempfile.TemporaryDirectory(prefix="brdf_lut_") as tmp:
        pack = Path(tmp) / "lut"
        shutil.copytree(shaders / "minimal", pack)
        shutil.copytree(shaders / "common", Path(tmp) / "common")  # the pack includes ../common
        frag = pack / "composite0.frag"
        text = frag.read_text()
        if "samplerBRDFLUT" not in text or "void main()" not in text:
            raise RuntimeError(f"{frag} declares no samplerBRDFLUT; this SAPIEN lays out its "
                               "shaders differently")
        text = text[:text.index("void main()")] + (
            "void main() {\n"
            "  outColor = vec4(texelFetch(samplerBRDFLUT, ivec2(gl_FragCoord.xy), 0).rg, 0.0, 1.0);\n"
            "}\n")
        frag.write_text(text)
        render.set_picture_format("Color", "r32g32b32a32sfloat")
        render.set_camera_shader_dir(str(pack))
        scene = sapien.Scene()
        camera = scene.add_camera("brdf_lut", SIZE, SIZE, 1.0, 0.01, 10.0)
        scene.update_render()
        camera.take_picture()
        picture = np.asarray(camera.get_picture("Color"), dtype=np.float32)
    table = picture[..., :2].astype(np.float16)
    if not np.array_equal(table.astype(np.float32), picture[..., :2]) or not valid(table):
        raise RuntimeError("the rendered table is not the R16G16 float table SAPIEN samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp_path, "wb") as fh:
        np.save(fh, table)
    os.replace(tmp_path, path)  # processes extracting side by side each write a whole file


def table() -> np.ndarray | None:
    """This machine's table, extracted first when it is not cached; None where that fails."""
    path = cache_path()
    cached = load(path)
    if cached is not None:
        return cached
    failed = path.with_suffix(".failed")
    if failed.exists():  # tried on this machine before: SAPIEN computes it, as it always did
        timed_out = failed.read_text().startswith(TIMEOUT_MARK)
        if not timed_out or time.time() - failed.stat().st_mtime < RETRY_AFTER_TIMEOUT_S:
            return None
        failed.unlink(missing_ok=True)  # a busy hour ago is not a broken renderer: try once more
    log.info("Extracting SAPIEN's BRDF table once for this machine into %s", path)
    try:
        subprocess.run([sys.executable, "-m", "harness.brdf_lut", str(path)], check=True,
                       capture_output=True, text=True, timeout=EXTRACT_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # a busy machine or a hanging renderer: tried again in an hour
        log.warning("Extracting SAPIEN's BRDF table took over %d s (a busy machine?); each process computes it "
                    "itself, and the extraction is tried again after %d min (or delete %s).", EXTRACT_TIMEOUT_S,
                    RETRY_AFTER_TIMEOUT_S // 60, failed)
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(f"{TIMEOUT_MARK} {EXTRACT_TIMEOUT_S} s\n")
        return None
    except (subprocess.SubprocessError, OSError) as exc:
        lines = (getattr(exc, "stderr", None) or "").strip().splitlines()
        reason = lines[-1] if lines else str(exc)
        log.warning("Could not extract SAPIEN's BRDF table (%s); each process computes it itself "
                    "(~10 s on a CPU renderer). Delete %s to try again.", reason, failed)
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(reason + "\n")
        return None
    return load(path)


def texture():
    """The table as a SAPIEN texture for this process (built once), or None."""
    if "texture" not in _state:
        data = table() if enabled() else None
        if data is None:
            _state["texture"] = None
        else:
            import sapien.render as render

            _state["texture"] = render.RenderTexture(data, 2, FORMAT, 1, "linear", "edge")
    return _state["texture"]


def give_to(camera) -> None:
    """Hand the table to a ManiSkill camera (``mani_skill.sensors.camera.Camera``) before its
    first picture. A camera made by a reconfiguring reset is a new object and gets it again."""
    if getattr(camera, "_harness_brdf_lut", False):
        return
    tex = texture()
    if tex is not None:
        for component in camera.camera._render_cameras:
            component.set_texture(TEXTURE_NAME, tex)
    camera._harness_brdf_lut = True


if __name__ == "__main__":
    extract(Path(sys.argv[1]))
