"""A sweep of bad inputs through every command: each ends with one line naming the input (exit
status 2), never a traceback or an 'internal error' (issue 13: fix the class, not the instance)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthex.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "latin1.csv").write_bytes("text\nÉpanchement pleural gauche\n".encode("latin-1"))
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "broken.yaml").write_text("rank: [1, 2\n")
    (root / "notes.txt").write_text("not a model")
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not a png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "plain.png")
    (root / "data").mkdir()
    (root / "data" / "metadata.csv").write_text("file_name,text\n../../etc/passwd,cardiomegaly\n")
    return root


CASES = [
    ("data prepare: no such source", ["data", "prepare", "--source", "{r}/nowhere", "--out", "{r}/o1"], "nowhere"),
    ("data prepare: --size 0", ["data", "prepare", "--source", "bundled", "--out", "{r}/o2", "--size", "0"], "size"),
    ("data prepare: --mode CMYK", ["data", "prepare", "--source", "bundled", "--out", "{r}/o3", "--mode", "CMYK"],
     "CMYK"),
    ("data prepare: --workers 0", ["data", "prepare", "--source", "bundled", "--out", "{r}/o4", "--workers", "0"],
     "workers"),
    ("data prepare: --shard 3/2", ["data", "prepare", "--source", "bundled", "--out", "{r}/o5", "--shard", "3/2"],
     "shard"),
    ("data prepare: --shard abc", ["data", "prepare", "--source", "bundled", "--out", "{r}/o6", "--shard", "abc"],
     "shard"),
    ("phantom render: --size 0", ["phantom", "render", "normal", "-o", "{r}/p.png", "--size", "0"], "size"),
    ("phantom render: unknown finding", ["phantom", "render", "purple elephant", "-o", "{r}/p.png"], "finding"),
    ("phantom render: side on cardiomegaly", ["phantom", "render", "left cardiomegaly", "-o", "{r}/p.png"], "side"),
    ("info: missing file", ["info", "{r}/nothing.png"], "nothing.png"),
    ("info: empty file", ["info", "{r}/empty.png"], "empty.png"),
    ("info: text named .png", ["info", "{r}/text.png"], "text.png"),
    ("generate --from: not a png", ["generate", "--from", "{r}/text.png", "-o", "{r}/g.png"], "text.png"),
    ("generate: --steps 0", ["generate", "Cardiomegaly.", "-o", "{r}/g.png", "--steps", "0"], "steps"),
    ("generate: --cfg nan", ["generate", "Cardiomegaly.", "-o", "{r}/g.png", "--cfg", "nan"], "nan"),
    ("generate: unknown sampler", ["generate", "Cardiomegaly.", "-o", "{r}/g.png", "--sampler", "Nope 9"], "Nope"),
    ("generate: empty prompt", ["generate", "", "-o", "{r}/g.png"], "PROMPT"),
    ("synthesize: missing prompts", ["synthesize", "--prompts", "{r}/none.csv", "--out", "{r}/s1"], "none.csv"),
    ("synthesize: Latin-1 CSV", ["synthesize", "--prompts", "{r}/latin1.csv", "--out", "{r}/s2"], "UTF-8"),
    ("train base: no data", ["train", "base", "--data", "{r}/nowhere", "--out", "{r}/t1"], "nowhere"),
    ("train base: --resolution 100", ["train", "base", "--data", "{r}/data", "--out", "{r}/t2", "--resolution", "100"],
     "resolution"),
    ("train lora: learning rate nan", ["train", "lora", "--data", "{r}/data", "--out", "{r}/t3", "--model", "embedded",
                                       "--learning-rate", "nan"], "nan"),
    ("train lora: --config a list", ["train", "lora", "--data", "{r}/data", "--out", "{r}/t4", "--config",
                                     "{r}/list.yaml"], "list.yaml"),
    ("train lora: --config broken YAML", ["train", "lora", "--data", "{r}/data", "--out", "{r}/t5", "--config",
                                          "{r}/broken.yaml"], "broken.yaml"),
    ("export-kohya: not safetensors", ["train", "export-kohya", "{r}/notes.txt", "-o", "{r}/k.safetensors"],
     "notes.txt"),
    ("evaluate: no real folder", ["evaluate", "--real", "{r}/nowhere", "--synthetic", "{r}/data", "--out", "{r}/e1"],
     "nowhere"),
    ("evaluate: --bootstrap -1", ["evaluate", "--real", "{r}/data", "--synthetic", "{r}/data", "--out", "{r}/e2",
                                  "--bootstrap", "-1"], "bootstrap"),
    ("search query: no index", ["search", "query", "{r}/nowhere", "effusion"], "nowhere"),
    ("translate: no finding", ["translate", "что-то странное"], "no finding"),
]


@pytest.mark.parametrize("args, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_not_a_traceback(files, args, needle):
    result = runner.invoke(app, [a.format(r=files) for a in args])
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert "Traceback" not in text and "internal error" not in text, text
    assert needle in text, text
