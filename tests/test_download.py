"""`download` and the main command's own downloads, against a real HTTP server on loopback serving real
Quick Draw files from ../shared/quickdraw (synthetic ones when that is absent)."""

from __future__ import annotations

import io
import signal
import time

import numpy as np
import pytest

from conftest import DOWNLOADED_CLASSES as CLASSES
from conftest import download, npy_bytes, run_cli, source_drawings, split_for, start_cli

pytestmark = pytest.mark.slow  # the command, as its own process, against a loopback HTTP server

ROWS = 130  # drawings of each class the split takes
HEADER_PROBE = 4096  # the first request asks for this many bytes


def assert_one_error_line(result, *mentions: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[-1]  # progress bars may come before it
    assert line.startswith("tune_search.py: error: "), result.stderr
    for mention in mentions:
        assert mention in line, f"{mention!r} not in {line!r}"
    return line


def data_offset(data: bytes) -> int:
    return len(data) - np.load(io.BytesIO(data)).nbytes


def test_download_takes_only_the_rows_the_split_needs(mirror, tmp_path):
    data = tmp_path / "data"
    result = download(mirror, data)
    assert result.returncode == 0, result.stderr
    for name in CLASSES:
        saved = np.load(data / f"{name}.npy", allow_pickle=False)
        np.testing.assert_array_equal(saved, source_drawings(name)[:ROWS])
        end = data_offset(mirror.files[f"{name}.npy"]) + ROWS * 784
        assert mirror.ranges_asked(f"{name}.npy") == [f"bytes=0-{HEADER_PROBE - 1}", f"bytes={HEADER_PROBE}-{end - 1}"]
    assert sorted(p.name for p in data.iterdir()) == ["cat.npy", "hot dog.npy"]  # no .part left
    assert mirror.body_bytes == sum(data_offset(f) + ROWS * 784 for f in mirror.files.values())
    assert "[1/2] cat" in result.stderr and "[2/2] hot dog" in result.stderr  # the progress bars
    assert f"{data / 'cat.npy'}: {ROWS} drawings" in result.stdout

    asked = len(mirror.requests)
    again = download(mirror, data)
    assert again.returncode == 0 and len(mirror.requests) == asked  # files with enough drawings are kept


def test_full_download_is_the_servers_file_byte_for_byte(mirror, tmp_path):
    data = tmp_path / "data"
    result = download(mirror, data, "--full", classes=("cat",))
    assert result.returncode == 0, result.stderr
    assert (data / "cat.npy").read_bytes() == mirror.files["cat.npy"]


def test_a_download_whose_md5_differs_from_the_servers_is_not_kept(mirror, tmp_path):
    mirror.wrong_md5 = True
    data = tmp_path / "data"
    assert_one_error_line(download(mirror, data, "--full", classes=("cat",)), "cat.npy", "MD5")
    assert list(data.iterdir()) == []


def test_a_cut_connection_is_resumed_in_the_same_run(mirror, tmp_path):
    mirror.cut_after, mirror.cuts_left = 50_000, 1
    data = tmp_path / "data"
    result = download(mirror, data, classes=("cat",))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(data / "cat.npy"), source_drawings("cat")[:ROWS])
    end = data_offset(mirror.files["cat.npy"]) + ROWS * 784
    assert mirror.ranges_asked("cat.npy")[1:] == [f"bytes={HEADER_PROBE}-{end - 1}",
                                                  f"bytes={HEADER_PROBE + 50_000}-{end - 1}"]


def test_an_interrupted_download_resumes_on_the_next_run(mirror, tmp_path):
    mirror.cut_after, mirror.cuts_left = 30_000, 3  # every attempt of this run breaks off
    data = tmp_path / "data"
    assert_one_error_line(download(mirror, data, classes=("cat",)), "cat.npy", "run the same command again")
    part = data / "cat.npy.part"
    kept = part.stat().st_size
    assert kept == HEADER_PROBE + 3 * 30_000 and not (data / "cat.npy").exists()

    asked = len(mirror.requests)
    result = download(mirror, data, classes=("cat",))
    assert result.returncode == 0, result.stderr
    end = data_offset(mirror.files["cat.npy"]) + ROWS * 784
    assert mirror.ranges_asked("cat.npy")[asked:] == [f"bytes={kept}-{end - 1}"]
    np.testing.assert_array_equal(np.load(data / "cat.npy"), source_drawings("cat")[:ROWS])
    assert not part.exists()


def test_ctrl_c_keeps_what_arrived_and_the_next_run_resumes_from_there(mirror, tmp_path):
    mirror.pause_s = 0.5  # 64 KiB every 0.5 s: about 8 s for the 1300 drawings asked for
    data, split = tmp_path / "data", split_for(("cat",), (1000, 200, 100))
    command = start_cli("download", "--data-dir", data, "--classes", "cat", "--split", split,
                        "--base-url", mirror.base_url)
    part = data / "cat.npy.part"
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size > HEADER_PROBE + 65536) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert command.poll() is None, f"the download ended before it could be interrupted: {command.communicate()[0]}"
    command.send_signal(signal.SIGINT)
    output, _ = command.communicate(timeout=60)
    assert command.returncode == 130 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1].startswith("tune_search.py: interrupted; run the same command again")
    kept = part.stat().st_size
    assert HEADER_PROBE + 65536 < kept < 1300 * 784 and not (data / "cat.npy").exists()

    mirror.pause_s, asked = 0, len(mirror.requests)
    result = download(mirror, data, classes=("cat",), split=split)
    assert result.returncode == 0, result.stderr
    assert mirror.ranges_asked("cat.npy")[asked].startswith(f"bytes={kept}-")
    np.testing.assert_array_equal(np.load(data / "cat.npy"), source_drawings("cat")[:1300])


def test_two_commands_started_together_download_each_file_once(mirror, tmp_path):
    mirror.pause_s = 0.05
    data = tmp_path / "data"
    command = ["download", "--data-dir", data, "--classes", ",".join(CLASSES), "--split", split_for(CLASSES),
               "--base-url", mirror.base_url]
    first, second = start_cli(*command), start_cli(*command)
    for process in (first, second):
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
    for name in CLASSES:
        assert mirror.ranges_asked(f"{name}.npy")[0] == f"bytes=0-{HEADER_PROBE - 1}"
        assert len(mirror.ranges_asked(f"{name}.npy")) == 2  # the header, then the drawings: by one command only
        np.testing.assert_array_equal(np.load(data / f"{name}.npy"), source_drawings(name)[:ROWS])


def test_a_data_dir_that_is_a_file_is_one_line(mirror, tmp_path):
    data = tmp_path / "data"
    data.write_text("not a folder")
    assert_one_error_line(download(mirror, data), str(data), "--data-dir")
    assert data.read_text() == "not a folder"


def test_a_file_changed_on_the_server_is_downloaded_again_from_the_start(mirror, tmp_path):
    mirror.cut_after, mirror.cuts_left = 30_000, 3
    data = tmp_path / "data"
    download(mirror, data, classes=("cat",))
    changed = 255 - source_drawings("cat")
    mirror.files["cat.npy"] = npy_bytes(changed)  # a new ETag: If-Range gets the whole file back
    result = download(mirror, data, classes=("cat",))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(data / "cat.npy"), changed[:ROWS])


def test_a_server_without_range_support_gets_one_plain_request(mirror, tmp_path):
    mirror.ignore_range = True
    data = tmp_path / "data"
    result = download(mirror, data, classes=("cat",))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(data / "cat.npy"), source_drawings("cat")[:ROWS])
    assert len(mirror.ranges_asked("cat.npy")) == 1


def test_an_unknown_class_is_a_404_line_and_the_classes_before_it_are_kept(mirror, tmp_path):
    data = tmp_path / "data"
    line = assert_one_error_line(download(mirror, data, classes=("cat", "unicorn")), "unicorn.npy", "404")
    assert "categories.txt" in line
    assert sorted(p.name for p in data.iterdir()) == ["cat.npy"]


def test_an_html_answer_is_one_line(mirror, tmp_path):
    mirror.html = True
    data = tmp_path / "data"
    assert_one_error_line(download(mirror, data), "cat.npy", "HTML page", "--base-url")
    assert not data.exists()


def test_a_file_shorter_than_its_header_promises_is_one_line(mirror, tmp_path):
    mirror.files["cat.npy"] = mirror.files["cat.npy"][: data_offset(mirror.files["cat.npy"]) + 1000 * 784]
    data = tmp_path / "data"
    assert_one_error_line(download(mirror, data, classes=("cat",), split="1000,200,100"), "cat.npy", "truncated")
    assert not data.exists()


def test_a_range_answered_with_the_wrong_bytes_is_one_line(mirror, tmp_path):
    mirror.misplaced_range = True
    data = tmp_path / "data"
    assert_one_error_line(download(mirror, data, classes=("cat",)), "cat.npy", "byte ranges")
    assert not (data / "cat.npy").exists()


def test_a_split_larger_than_the_file_is_one_line(mirror, tmp_path):
    assert_one_error_line(download(mirror, tmp_path / "data", split="8000,1000,1000"),
                          "cat.npy", "2500 drawings", "5000", "--split")


def test_a_base_url_that_is_not_http_is_one_line(tmp_path):
    result = run_cli("download", "--data-dir", tmp_path, "--classes", "cat,dog", "--base-url", "ftp://example.org/")
    assert_one_error_line(result, "--base-url", "ftp://example.org/")


def test_convert_downloads_missing_classes_first(mirror, tmp_path):
    data, storage = tmp_path / "data", tmp_path / "results"
    result = run_cli("convert", "--data-dir", data, "--classes", ",".join(CLASSES), "--split", split_for(CLASSES),
                     "--storage", storage, "--base-url", mirror.base_url)
    assert result.returncode == 0, result.stderr
    assert "converted {'train': 200, 'validation': 40, 'test': 20}" in result.stdout
    np.testing.assert_array_equal(np.load(data / "hot dog.npy"), source_drawings("hot dog")[:ROWS])
