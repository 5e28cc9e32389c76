"""The text dataset readers (robprune.data.text_sources) on files in the real released formats written
here (GLUE SST-2 TSVs, the aclImdb tree and its tar.gz, the char-CNN AG News CSVs), their downloads from
a local HTTP server on 127.0.0.1, their bad inputs, and the shared real SST-2 copy when it exists."""
import functools
import hashlib
import io
import re
import tarfile
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from robprune.data import text_sources as ts
from robprune.data.text_sources import canonical_split
from robprune.errors import ConfigError, DataError
from robprune.registry import DATASETS
from tests.data_fixtures import dataset_cfg
from tests.text_fixtures import sentences, write_sst2, write_tsv

TEXT_NAMES = DATASETS.names(modality="text")

SHARED_SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


def load(name, root, split, **overrides):
    """(sentences, labels as a list) of one split, through the registry's locate and read."""
    source, cfg = DATASETS.get(name), dataset_cfg(name, root, **overrides)
    texts, labels = source.read(cfg, canonical_split(source, split), source.locate(cfg, split))
    assert labels.dtype == torch.int64 and labels.shape == (len(texts),)
    return texts, labels.tolist()


def one_line_error(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message and all(str(part) in message for part in parts), message


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_configs_agree_with_the_registry(name):
    cfg, source = dataset_cfg(name, "/nowhere"), DATASETS.get(name)
    assert cfg.num_classes == source.num_classes
    assert {canonical_split(source, cfg.train_split), canonical_split(source, cfg.test_split)} <= set(source.splits)


# ---------------------------------------------------------------- SST-2

def test_sst2_column_order_and_text_column_name_do_not_matter(tmp_path):
    expected = {"train": sentences(20, seed=0), "dev": sentences(8, seed=1)}
    for header in (("label", "sentence"), ("sentence", "label"), ("label", "content")):
        root = write_sst2(tmp_path / "-".join(header), 20, 8, header=header)
        for split, rows in expected.items():
            texts, labels = load("sst2", root, split)
            assert texts == [text for _, text in rows] and labels == [label for label, _ in rows]


def test_sst2_quotes_crlf_bom_and_trailing_spaces(tmp_path):
    """GLUE's rows end in a space before the tab; quotes are text, not csv quoting."""
    rows = ['" the film " is "great \t1', "it 's a \" mess\t0", '"""\t1', "l'amour , \"\"fou\"\" \t1"]
    (tmp_path / "dev.tsv").write_bytes(("\ufeffsentence\tlabel\r\n" + "\r\n".join(rows) + "\r\n\r\n").encode())
    texts, labels = load("sst2", tmp_path, "dev")
    assert texts == ['" the film " is "great', "it 's a \" mess", '"""', "l'amour , \"\"fou\"\""]
    assert labels == [1, 0, 1, 1]


def test_sst2_split_names(tmp_path):
    root = write_sst2(tmp_path, 6, 4)
    assert canonical_split(ts.SST2, "validation") == "dev" == canonical_split(ts.SST2, "dev")
    assert ts.SST2.locate(dataset_cfg("sst2", root), "validation") == [root / "dev.tsv"]
    assert load("sst2", root, "validation") == load("sst2", root, "dev")
    with pytest.raises(ConfigError, match=r"test\.tsv has no labels; evaluate on the dev split .*test_split=dev"):
        ts.SST2.locate(dataset_cfg("sst2", root), "test")
    with pytest.raises(ConfigError, match=r"'sst2' has no split 'dev2'; use one of train, dev, validation \(= dev\)"):
        canonical_split(ts.SST2, "dev2")


@pytest.mark.parametrize("content,message", [
    (b"", r"has no header line and no rows"),
    (b"label\tsentence\n", r"has no rows"),
    (b"polarity\tsentence\n1\tfine\n", r"header line has no 'label' column, found columns \['polarity', 'sentence'\]"),
    (b"label\treview\n1\tfine\n", r"header line has no text column \(sentence or content or text\)"),
    (b"label\tsentence\n1\tfine\n0\tbad\textra\n", r"line 3: 3 tab-separated fields but the header has 2"),
    (b"label\tsentence\n1\tfine\n0\n", r"line 3: 1 tab-separated fields"),
    (b"sentence\tlabel\nfine\t1\nso so\t2\n", r"line 3: label '2' is not 0 or 1"),
    (b"sentence\tlabel\nfine\tpositive\n", r"line 2: label 'positive' is not 0 or 1"),
    (b"label\tsentence\n1\tfine\n0\t  \n", r"line 3: the sentence is empty"),
    (b"label\tsentence\n1\tcaf\xe9\n", r"train\.tsv, line 2: not UTF-8 text"),
], ids=["empty", "header only", "no label column", "no text column", "extra field", "missing field", "label 2",
        "label word", "empty sentence", "latin-1"])
def test_sst2_bad_files_name_the_file_and_the_fix(tmp_path, content, message):
    (tmp_path / "train.tsv").write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        load("sst2", tmp_path, "train")
    one_line_error(err, tmp_path / "train.tsv", "data.download=true")


def test_sst2_missing_file(tmp_path):
    write_tsv(tmp_path / "train.tsv", sentences(4))
    with pytest.raises(DataError, match=r"dataset 'sst2': no files found under .* \(looked for dev\.tsv\)") as err:
        load("sst2", tmp_path, "dev")
    one_line_error(err, tmp_path, "data.download=true")


@pytest.mark.skipif(not SHARED_SST2.is_dir(), reason="no shared SST-2 copy beside the repository (shared/data/sst2)")
def test_shared_sst2_copy():
    train_texts, train_labels = load("sst2", SHARED_SST2, "train")
    dev_texts, dev_labels = load("sst2", SHARED_SST2, "validation")
    assert len(train_texts) == 67349 and len(dev_texts) == 872
    assert set(train_labels) == set(dev_labels) == {0, 1} and all(train_texts) and all(dev_texts)
    assert train_texts[0] == "hide new secretions from the parental units"


# ---------------------------------------------------------------- IMDB

REVIEWS = {  # (split, class folder) -> [(id, rating, text as released)]
    ("train", "neg"): [(10, 1, "Dull.<br /><br />Truly dull."), (2, 3, 'A "so-so" film, sadly.'), (1, 4, "Weak plot")],
    ("train", "pos"): [(7, 9, "Loved it"), (12, 10, "Brilliant<br />acting <br/> here"), (3, 8, "Fine fun\n")],
    ("test", "neg"): [(4, 2, "Bad"), (0, 1, "Awful")],
    ("test", "pos"): [(0, 7, "Good")],
}


def make_imdb(root: Path) -> Path:
    """root/aclImdb in the layout of aclImdb_v1.tar.gz, with unsup/ reviews and the files beside them."""
    base = root / "aclImdb"
    for (split, label), reviews in REVIEWS.items():
        for review_id, rating, text in reviews:
            path = base / split / label / f"{review_id}_{rating}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (base / split / f"urls_{label}.txt").write_text("http://www.imdb.com/title/tt0000001/usercomments\n")
    (base / "train" / "unsup").mkdir()
    (base / "train" / "unsup" / "0_0.txt").write_text("unlabelled")  # rating 0: never read
    (base / "train" / "unsupBow.feat").write_text("0 0:1\n")
    (base / "README").write_text("Large Movie Review Dataset v1.0\n")
    (base / "imdb.vocab").write_text("the\nand\n")
    return base


def pack_imdb(folder: Path, tree_root: Path, *, extra: tarfile.TarInfo | None = None) -> Path:
    """folder/aclImdb_v1.tar.gz of tree_root/aclImdb (members named aclImdb/...), plus ``extra``."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree_root / "aclImdb", arcname="aclImdb")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"evil"))
    return archive


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


TRAIN_TEXTS = ["Weak plot", 'A "so-so" film, sadly.', "Dull. Truly dull.",   # neg by id: 1, 2, 10
               "Fine fun", "Loved it", "Brilliant acting here"]                 # pos by id: 3, 7, 12


def test_imdb_labels_order_and_text(tmp_path):
    make_imdb(tmp_path)
    assert load("imdb", tmp_path, "train") == (TRAIN_TEXTS, [0, 0, 0, 1, 1, 1])   # (label, numeric id) order
    assert load("imdb", tmp_path, "test") == (["Awful", "Bad", "Good"], [0, 0, 1])
    files = ts.IMDB.locate(dataset_cfg("imdb", tmp_path), "train")
    assert [f.name for f in files] == ["1_4.txt", "2_3.txt", "10_1.txt", "3_8.txt", "7_9.txt", "12_10.txt"]


@pytest.mark.parametrize("damage,message", [
    (lambda b: (b / "train" / "neg" / "x.txt").write_text("?"), r"x\.txt is not an aclImdb review"),
    (lambda b: (b / "train" / "pos" / "5_2.txt").write_text("?"), r"5_2\.txt is not an aclImdb review.*rating 7-10"),
    (lambda b: [p.unlink() for p in (b / "train" / "pos").iterdir()], r"train/pos holds no <id>_<rating>\.txt reviews"),
    (lambda b: (b / "train" / "neg" / "1_4.txt").write_text(" <br /> "), r"1_4\.txt is empty"),
    (lambda b: (b / "train" / "neg" / "1_4.txt").write_bytes(b"caf\xe9"), r"1_4\.txt is not UTF-8"),
], ids=["bad name", "rating of the other class", "empty class", "empty review", "latin-1"])
def test_imdb_damaged_tree(tmp_path, damage, message):
    damage(make_imdb(tmp_path))
    with pytest.raises(DataError, match=message) as err:
        load("imdb", tmp_path, "train")
    one_line_error(err, tmp_path / "aclImdb", "aclImdb_v1.tar.gz")


def test_imdb_missing(tmp_path):
    with pytest.raises(DataError, match=r"dataset 'imdb': no files found under .*aclImdb/train/\{neg,pos\}.*"
                                        r"aclImdb_v1\.tar\.gz.*data\.download=true"):
        load("imdb", tmp_path, "train")
    make_imdb(tmp_path)
    for path in (tmp_path / "aclImdb" / "test" / "pos").iterdir():
        path.unlink()
    (tmp_path / "aclImdb" / "test" / "pos").rmdir()
    with pytest.raises(DataError, match=r"test/pos is missing; re-extract aclImdb_v1\.tar\.gz"):
        load("imdb", tmp_path, "test")


def test_imdb_archive_in_root_is_extracted_without_download(tmp_path, monkeypatch):
    make_imdb(tmp_path / "src")
    root = tmp_path / "data"
    monkeypatch.setattr(ts, "IMDB_MD5", md5(pack_imdb(root, tmp_path / "src")))
    monkeypatch.setattr(ts, "IMDB_URL", "http://127.0.0.1:9/never-asked")
    assert load("imdb", root, "train") == (TRAIN_TEXTS, [0, 0, 0, 1, 1, 1])
    assert not (root / "aclImdb" / "train" / "unsup").exists()
    assert (root / "aclImdb" / "README").is_file() and (root / "aclImdb" / "train" / "unsupBow.feat").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["aclImdb", "aclImdb_v1.tar.gz"]


def test_imdb_archive_in_root_with_another_md5(tmp_path):
    make_imdb(tmp_path / "src")
    archive = pack_imdb(tmp_path / "data", tmp_path / "src")
    with pytest.raises(DataError, match=rf"has md5 {md5(archive)}, not {ts.IMDB_MD5} of the official archive") as err:
        load("imdb", tmp_path / "data", "train")
    one_line_error(err, archive)
    assert not (tmp_path / "data" / "aclImdb").exists()


def test_imdb_archive_escaping_its_folder_is_refused(tmp_path, monkeypatch):
    make_imdb(tmp_path / "src")
    evil = tarfile.TarInfo("aclImdb/../../evil.txt")
    evil.size = 4
    root = tmp_path / "data"
    monkeypatch.setattr(ts, "IMDB_MD5", md5(pack_imdb(root, tmp_path / "src", extra=evil)))
    with pytest.raises(DataError, match=r"aclImdb_v1\.tar\.gz cannot be extracted") as err:
        load("imdb", root, "train")
    one_line_error(err, root, "data.download=true")
    assert not (tmp_path / "evil.txt").exists() and sorted(p.name for p in root.iterdir()) == ["aclImdb_v1.tar.gz"]


# ---------------------------------------------------------------- AG News

AG_CSV = (  # the char-CNN release's style: all fields quoted, "" inside, backslash line breaks, \$
    '"3","Wall St. Bears Claw Back Into the Black (Reuters)","Reuters - Short-sellers, Wall Street\'s '
    'dwindling\\band of ultra-cynics, are seeing green again."\n'
    '"1","Talks ""stall"", envoy says","A crisis, and gave\\no indication.\\\\More at 11 ...\\\\"\n'
    '"2","Final: 3, 2","Team wins \\$5 million prize \\  in Paris"\n'
    '"4","Title only",""\n'
)
AG_TEXTS = ["Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers, Wall Street's dwindling band "
            "of ultra-cynics, are seeing green again.",
            'Talks "stall", envoy says A crisis, and gave no indication. More at 11 ...',
            "Final: 3, 2 Team wins $5 million prize in Paris",
            "Title only"]


def test_ag_news_fields_escapes_and_classes(tmp_path):
    (tmp_path / "train.csv").write_text(AG_CSV, encoding="utf-8")
    (tmp_path / "test.csv").write_text('"4","A","b"\r\n"1","C","d"\r\n', encoding="utf-8")
    assert load("ag_news", tmp_path, "train") == (AG_TEXTS, [2, 0, 1, 3])
    assert load("ag_news", tmp_path, "test") == (["A b", "C d"], [3, 0])


@pytest.mark.parametrize("content,message", [
    ('"Class Index","Title","Description"\n"1","a","b"\n', r"line 1: class 'Class Index' is not one of 1, 2, 3, 4 "
                                                           r"\(the release has no header line: remove it\)"),
    ('"1","a","b"\n"5","c","d"\n', r"line 2: class '5' is not one of 1, 2, 3, 4;"),
    ('"0","a","b"\n', r"line 1: class '0'"),
    ('"1","a","b"\n"2","only two"\n', r"line 2: 2 columns, expected 3"),
    ('"1","a","b"\n"2","c","d","e"\n', r"line 2: 4 columns, expected 3"),
    ('"1","a","b"\n"2","c"x,"d"\n', r"line 2: not readable as CSV"),
    ('"1","",""\n', r"line 1: title and description are empty"),
    ("", r"has no rows"),
], ids=["header", "class 5", "class 0", "two columns", "four columns", "broken quoting", "empty text", "empty"])
def test_ag_news_bad_files(tmp_path, content, message):
    (tmp_path / "test.csv").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        load("ag_news", tmp_path, "test")
    one_line_error(err, tmp_path / "test.csv", "data.download=true")


def test_ag_news_split_names_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset 'ag_news' has no split 'dev'; use one of train, test, optionally"):
        canonical_split(ts.AG_NEWS, "dev")
    with pytest.raises(DataError, match=r"dataset 'ag_news': no files found under .* \(looked for train\.csv\)"):
        load("ag_news", tmp_path, "train")


# ---------------------------------------------------------------- downloads from 127.0.0.1

class Handler(SimpleHTTPRequestHandler):
    """Serves the folder; /truncated/<name> promises 100,000 bytes and sends 1,000 (a dropped connection)."""

    def do_GET(self):
        if not self.path.startswith("/truncated/"):
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)
        self.close_connection = True

    def log_message(self, *args):  # no request lines on stderr
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder served over HTTP from 127.0.0.1 on an ephemeral port, its base URL); downloads time out after 5 s."""
    for key in ("no_proxy", "NO_PROXY"):  # a configured proxy must not be asked for 127.0.0.1
        monkeypatch.setenv(key, "127.0.0.1,localhost")
    monkeypatch.setattr(ts, "TIMEOUT_S", 5.0)
    folder = tmp_path / "srv"
    folder.mkdir()
    with ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            thread.join(timeout=5)


def test_imdb_download_fetches_checks_and_extracts(server, tmp_path, monkeypatch):
    folder, url = server
    make_imdb(tmp_path / "src")
    monkeypatch.setattr(ts, "IMDB_MD5", md5(pack_imdb(folder, tmp_path / "src")))
    monkeypatch.setattr(ts, "IMDB_URL", f"{url}/aclImdb_v1.tar.gz")
    root = tmp_path / "fresh"
    assert load("imdb", root, "train", download=True) == (TRAIN_TEXTS, [0, 0, 0, 1, 1, 1])
    assert load("imdb", root, "test", download=True)[1] == [0, 0, 1]
    assert sorted(p.name for p in root.iterdir()) == ["aclImdb", "aclImdb_v1.tar.gz"]   # no temp files left


def test_imdb_download_with_a_wrong_md5_leaves_nothing(server, tmp_path, monkeypatch):
    folder, url = server
    make_imdb(tmp_path / "src")
    archive = pack_imdb(folder, tmp_path / "src")   # IMDB_MD5 stays the official archive's: this one differs
    monkeypatch.setattr(ts, "IMDB_URL", f"{url}/aclImdb_v1.tar.gz")
    root = tmp_path / "fresh"
    with pytest.raises(DataError, match=rf"dataset 'imdb': download into .* failed \(ValueError: md5 of .* is "
                                        rf"{md5(archive)}, expected {ts.IMDB_MD5}\).*data\.download=false") as err:
        load("imdb", root, "train", download=True)
    one_line_error(err, root)
    assert list(root.iterdir()) == []


def test_sst2_download_extracts_train_and_dev(server, tmp_path, monkeypatch):
    folder, url = server
    glue = {"train.tsv": sentences(10, seed=0), "dev.tsv": sentences(4, seed=1)}
    with zipfile.ZipFile(folder / "SST-2.zip", "w") as zf:   # GLUE's layout: sentence first, a space before the tab
        for name, rows in glue.items():
            zf.writestr(f"SST-2/{name}", "sentence\tlabel\n" + "".join(f"{t} \t{y}\n" for y, t in rows))
        zf.writestr("SST-2/test.tsv", "index\tsentence\n0\tno label here \n")
        zf.writestr("SST-2/original/README.txt", "Stanford Sentiment Treebank\n")
    monkeypatch.setattr(ts, "SST2_URL", f"{url}/SST-2.zip")
    root = tmp_path / "fresh"
    train = glue["train.tsv"]
    assert load("sst2", root, "train", download=True) == ([t for _, t in train], [y for y, _ in train])
    assert load("sst2", root, "validation", download=True)[1] == [y for y, _ in glue["dev.tsv"]]
    assert sorted(p.name for p in root.iterdir()) == ["SST-2.zip", "dev.tsv", "train.tsv"]
    (root / "train.tsv").unlink()                  # only the missing file is extracted again, from the kept zip
    (folder / "SST-2.zip").unlink()
    own_dev = write_tsv(root / "dev.tsv", sentences(3, seed=5)).read_bytes()
    assert load("sst2", root, "train", download=True)[1] == [y for y, _ in train]
    assert (root / "dev.tsv").read_bytes() == own_dev


def test_ag_news_download(server, tmp_path, monkeypatch):
    folder, url = server
    (folder / "ag").mkdir()
    (folder / "ag" / "train.csv").write_text(AG_CSV, encoding="utf-8")
    (folder / "ag" / "test.csv").write_text('"2","T","d"\n', encoding="utf-8")
    monkeypatch.setattr(ts, "AG_NEWS_URL", f"{url}/ag/")
    root = tmp_path / "fresh"
    assert load("ag_news", root, "train", download=True) == (AG_TEXTS, [2, 0, 1, 3])
    assert load("ag_news", root, "test", download=True) == (["T d"], [1])
    assert sorted(p.name for p in root.iterdir()) == ["test.csv", "train.csv"]


@pytest.mark.parametrize("path,error", [
    ("missing/", r"HTTPError: HTTP Error 404"),
    ("truncated/", r"ValueError: .*/truncated/test\.csv ended after 1000 of its 100000 bytes"),
], ids=["404", "dropped connection"])
def test_failed_download_leaves_no_file(server, tmp_path, monkeypatch, path, error):
    _, url = server
    monkeypatch.setattr(ts, "AG_NEWS_URL", f"{url}/{path}")
    root = tmp_path / "fresh"
    with pytest.raises(DataError, match=rf"dataset 'ag_news': download into {re.escape(str(root))} failed \({error}"):
        load("ag_news", root, "test", download=True)
    assert list(root.iterdir()) == []
