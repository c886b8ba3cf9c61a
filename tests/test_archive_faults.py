"""Whatever a file named like an archive holds, reading it as data ends in one line naming it (issue 22)."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from vit_cifar.data.sources import load_image_folder
from vit_cifar.errors import DataError


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("train/cat/0.png", b"not a png")
    return buffer.getvalue()


def _tar_gz(members: int = 40) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(members):
            data = bytes(range(256)) * 40
            info = tarfile.TarInfo(f"images/train/cat/{i}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


NOT_ARCHIVES = {
    "text.tar.gz": b"hello\n",
    "empty.tar": b"",
    "noise.tgz": bytes(range(256)) * 12,
    "gzipped-text.tar.gz": gzip.compress(b"no tar header here\n" * 100),
    "zip.tar.gz": _zip(),
    "gzip-header-only.tar.gz": b"\x1f\x8b\x08\x00garbage",
    "truncated.tar.gz": _tar_gz()[:1500],
}


@pytest.mark.parametrize("name", NOT_ARCHIVES)
def test_a_file_that_is_not_a_whole_archive_is_one_line_naming_it(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes(NOT_ARCHIVES[name])
    with pytest.raises(DataError) as refused:
        load_image_folder(path, 32, tmp_path / "cache")
    line = str(refused.value)
    assert "\n" not in line
    assert str(path) in line
    assert not (tmp_path / "cache").exists()


def test_every_user_error_is_one_line_whatever_message_it_quotes():
    quoted = "file could not be opened successfully:\n- method gz: ReadError('not a gzip file')\n"
    assert str(DataError(f"cannot read x ({quoted}): fix it")) == (
        "cannot read x (file could not be opened successfully: - method gz: ReadError('not a gzip file') ): fix it"
    )


@pytest.mark.e2e
def test_through_the_command_line_a_fake_archive_is_one_line(tmp_path: Path):
    from faults_support import error_lines, train_cli

    fake = tmp_path / "cifar10.tar.gz"
    fake.write_text("this is not an archive\n")
    result = train_cli(
        [f"data.root={fake}", "trainer=cpu", "data.num_workers=0", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        timeout=180,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert error_lines(result) == [
        f"error: data.root={fake} does not open as a tar archive (plain, gzip, bz2 or xz): point it at a "
        ".tar/.tar.gz of an image folder, or fetch the archive again"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()
