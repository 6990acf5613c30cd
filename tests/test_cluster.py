"""`facesearch cluster`: grouping, the clusters folder across runs and edits, naming a group into a gallery."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders import run_cli as run, tiny_checkpoint


def people_vectors(rng, n_people=5, per_person=6, strangers=10, d=32, spread=0.15):
    centres = rng.normal(size=(n_people + strangers, d))
    x = np.concatenate([np.repeat(centres[:n_people], per_person, 0), centres[n_people:]])
    x = x + spread * rng.normal(size=x.shape)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = [i for i in range(n_people) for _ in range(per_person)] + [-1] * strangers
    return x.astype(np.float32), np.array(truth)


@pytest.mark.parametrize("algorithm", ["complete", "average", "dbscan"])
def test_group_faces_finds_the_people_and_leaves_strangers_unclustered(algorithm):
    from facesearch.cluster import ClusterSettings, group_faces

    x, truth = people_vectors(np.random.default_rng(0))
    labels = group_faces(x, ClusterSettings(algorithm=algorithm, eps=0.3, min_size=2, centre=False))
    for person in range(5):
        assert len(set(labels[truth == person])) == 1 and labels[truth == person][0] >= 0, labels
    assert len(set(labels[truth >= 0])) == 5  # five groups, one per person
    assert (labels[truth == -1] == -1).all()  # one-off faces belong to no group


def _clusters(tmp_path, x):
    from facesearch.cluster import Clusters, ClusterSettings, FaceRow

    rows = [FaceRow(i + 1, f"/p/{i}.jpg", f"sha{i}", [0, 0, 10, 10], 0.99, 1) for i in range(len(x))]
    return Clusters(tmp_path, rows, x, {"fingerprint": "fp", "source": None},
                    ClusterSettings(eps=0.3, centre=False))


def test_regrouping_keeps_ids_names_and_a_persons_edits(tmp_path):
    from facesearch.cluster import UNCLUSTERED, FaceRow, merge, regroup, remove

    rng = np.random.default_rng(1)
    x, truth = people_vectors(rng)
    c = _clusters(tmp_path, x)
    regroup(c)
    group_of = {p: c.rows[int(np.flatnonzero(truth == p)[0])].group for p in range(5)}
    c.names[group_of[0]] = "Ann"
    removed = c.rows[int(np.flatnonzero(truth == 1)[0])].face_id
    remove(c, [removed])
    moved = merge(c, group_of[2], [group_of[3]])
    assert moved == 6
    # new photos: two more faces of person 0 and one new person
    more, _ = people_vectors(np.random.default_rng(1), n_people=5, per_person=8, strangers=0)
    extra = np.concatenate([more[6:8], people_vectors(np.random.default_rng(9), n_people=1, strangers=0)[0]])
    start = len(c.rows)
    c.rows += [FaceRow(start + i + 1, f"/p/new{i}.jpg", f"new{i}", [0, 0, 10, 10], 0.99, 1) for i in range(len(extra))]
    c.vectors = np.concatenate([c.vectors, extra])
    regroup(c)
    assert c.names == {group_of[0]: "Ann"}
    assert {r.group for r, t in zip(c.rows, truth) if t == 0} == {group_of[0]}
    assert c.rows[start].group == c.rows[start + 1].group == group_of[0]  # the new photos of Ann joined her group
    assert next(r for r in c.rows if r.face_id == removed).group == UNCLUSTERED  # taken out, stays out
    assert {r.group for r, t in zip(c.rows, truth) if t in (2, 3)} == {group_of[2]}  # the merge holds
    new_person = {r.group for r in c.rows[start + 2:]}
    assert len(new_person) == 1 and new_person.isdisjoint(group_of.values())  # a new group, a new id


def test_split_pins_its_parts_and_frees_the_faces_that_fit_none(tmp_path):
    from facesearch.cluster import UNCLUSTERED, merge, regroup, split

    x, truth = people_vectors(np.random.default_rng(2))
    c = _clusters(tmp_path, x)
    regroup(c)
    first, second = (c.rows[int(np.flatnonzero(truth == p)[0])].group for p in (0, 1))
    merge(c, first, [second])  # a person's edit: every face of both now pinned "in" the first group
    assert all(c.rows[i].pinned == "in" for i in np.flatnonzero(np.isin(truth, (0, 1))))
    stray = int(np.flatnonzero(truth == -1)[0])  # a stranger pulled in by hand, far from both people
    c.rows[stray].group, c.rows[stray].pinned = first, "in"
    parts = split(c, first, eps=0.3)
    assert len(parts) == 2 and first in parts
    assert {c.rows[i].group for i in np.flatnonzero(np.isin(truth, (0, 1)))} == set(parts)
    assert c.rows[stray].group == UNCLUSTERED and c.rows[stray].pinned == ""  # not held at "no group" by a pin
    regroup(c)
    assert c.rows[stray].group == UNCLUSTERED  # a one-off face: the algorithm leaves it out again, by itself
    assert {c.rows[i].group for i in np.flatnonzero(truth == 0)} != {c.rows[i].group for i in np.flatnonzero(truth == 1)}


@pytest.fixture(scope="module")
def photos(sample_photos, tmp_path_factory):
    """Two people (two photos each) and a group photo of the two."""
    root = tmp_path_factory.mktemp("cluster")
    folder = root / "photos"
    folder.mkdir()
    people = sorted(p for p in sample_photos.iterdir() if p.is_dir())[:2]
    singles = []
    for person in people:
        for photo in sorted(person.glob("*.jpg"))[:2]:
            shutil.copy(photo, folder / f"{person.name}-{photo.name}")
            singles.append(folder / f"{person.name}-{photo.name}")
    a, b = (Image.open(singles[i]).convert("RGB") for i in (0, 2))
    group = Image.new("RGB", (a.width + b.width + 40, max(a.height, b.height)), (128, 128, 128))
    group.paste(a, (0, 0))
    group.paste(b, (a.width + 40, 0))
    group.save(folder / "group.jpg", quality=95)
    return root, folder, tiny_checkpoint(root / "tiny.pt"), [p.name for p in people]


def test_cluster_then_name_a_group_then_rerun_with_new_photos(photos, tmp_path, sample_photos):
    root, folder, checkpoint, people = photos
    work = tmp_path / "photos"
    shutil.copytree(folder, work)
    out = tmp_path / "clusters"
    # with random weights (centred on the folder) only a face and its own pasted copy are this close
    first = json.loads(run("cluster", work, "--out", out, "-c", checkpoint, "--eps", "0.25", "--min-size", "2", "--device", "cpu",
                           "--json").stdout)
    assert first["photos"] == 5 and first["faces"] >= 6 and first["new_photos"] == 5
    rows = list(__import__("csv").DictReader(open(out / "faces.csv")))
    in_group_photo = [r for r in rows if r["photo"].endswith("group.jpg")]
    assert len(in_group_photo) >= 2
    groups = {int(r["group"]) for r in in_group_photo}
    assert len(groups - {-1}) >= 2  # a group photo's faces land in different groups
    for g in first["group_list"]:
        assert Path(g["sheet"]).is_file()
    target = next(g for g in first["group_list"] if g["faces"] >= 2)
    members = [r for r in rows if int(r["group"]) == target["group"]]
    named = json.loads(run("clusters", "name", out, target["group"], "Someone", "-g", tmp_path / "g",
                           "--json").stdout)
    assert named["result"]["enrolled"] == len(members)
    listed = json.loads(run("identities", "list", "-g", tmp_path / "g", "--json").stdout)
    assert listed == [{"name": "Someone", "faces": len(members), "updated": listed[0]["updated"]}]
    again = json.loads(run("clusters", "name", out, target["group"], "Someone", "-g", tmp_path / "g",
                           "--json").stdout)
    assert again["result"]["enrolled"] == 0 and len(again["result"]["duplicates"]) == len(members)  # once each
    # a new photo appears: the old faces are reused, the name stays with its group
    extra = sorted((sample_photos / people[1]).glob("*.jpg"))[5]
    shutil.copy(extra, work / "new.jpg")
    rerun = json.loads(run("cluster", work, "--out", out, "--device", "cpu", "-c", checkpoint, "--json").stdout)
    assert rerun["new_photos"] == 1 and rerun["reused_photos"] == 5
    names = {g["group"]: g["name"] for g in rerun["group_list"]}
    assert names.get(target["group"]) == "Someone"


def test_cluster_refuses_another_model_and_names_missing_groups(photos, tmp_path):
    root, folder, checkpoint, _ = photos
    out = tmp_path / "clusters"
    run("cluster", folder, "--out", out, "-c", checkpoint, "--eps", "0.25", "--min-size", "2", "--device", "cpu")
    other = run("cluster", folder, "--out", out, "-c", tiny_checkpoint(tmp_path / "other.pt", seed=3), ok=False)
    assert other.exit_code == 1 and "clustered with model" in other.stderr
    missing = run("clusters", "name", out, "999", "X", "-g", tmp_path / "g", ok=False)
    assert missing.exit_code == 1 and "no group 999" in missing.stderr
    assert not (tmp_path / "g" / "gallery.db").exists() or run("identities", "list", "-g", tmp_path / "g").stdout \
        .strip() == "(no identities)"


def test_cluster_refuses_another_folder_into_the_same_clusters_and_keeps_a_moved_one(photos, tmp_path, sample_photos):
    from facesearch.cluster import edit

    root, folder, checkpoint, _ = photos
    work, out = tmp_path / "photos", tmp_path / "clusters"
    shutil.copytree(folder, work)
    first = json.loads(run("cluster", work, "--out", out, "-c", checkpoint, "--eps", "0.25", "--min-size", "2",
                           "--device", "cpu", "--json").stdout)
    named = first["group_list"][0]["group"]
    edit(out, lambda c: c.names.update({named: "Ann"}))
    stored = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = tmp_path / "other"
    other.mkdir()
    for photo in sorted(sorted(p for p in sample_photos.iterdir() if p.is_dir())[2].glob("*.jpg"))[:2]:
        shutil.copy(photo, other / photo.name)
    refused = run("cluster", other, "--out", out, "-c", checkpoint, "--device", "cpu", ok=False)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert str(work) in refused.stderr and str(other) in refused.stderr and "new folder (--out)" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == stored  # nothing stored is lost
    moved = work.rename(tmp_path / "moved")  # the same photos elsewhere: found again by their content
    again = json.loads(run("cluster", moved, "--out", out, "-c", checkpoint, "--device", "cpu", "--json").stdout)
    assert again["reused_photos"] == 5 and again["new_photos"] == 0
    assert {g["group"]: g["name"] for g in again["group_list"]}[named] == "Ann"


def test_cluster_of_missing_or_unreadable_photos_fails_and_writes_nothing(photos, tmp_path):
    root, folder, checkpoint, _ = photos
    missing = run("cluster", tmp_path / "nonexist", "--out", tmp_path / "c1", "-c", checkpoint, ok=False)
    assert missing.exit_code == 1 and "nonexist: no such file or folder" in missing.stderr
    empty = tmp_path / "empty.jpg"
    empty.touch()
    none = run("cluster", empty, "--out", tmp_path / "c2", "-c", checkpoint, "--device", "cpu", "--json", ok=False)
    assert none.exit_code == 1 and "empty file" in json.loads(none.stdout)["failures"][str(empty)]
    assert not (tmp_path / "c1").exists() and not (tmp_path / "c2").exists()
    some = run("cluster", folder, empty, "--out", tmp_path / "c3", "-c", checkpoint, "--device", "cpu", ok=False)
    assert some.exit_code == 2 and "1 of 6 photos could not be read" in some.stderr
    assert f"{empty}: not_an_image" in some.stdout and (tmp_path / "c3" / "clusters.json").is_file()


def test_a_clustering_stopped_midway_leaves_the_folder_as_its_last_save(photos, tmp_path):
    """cluster_folder stopped between photos (its progress raising: how the service cancels one) removes the crops
    it wrote and saves nothing: the folder's files are what they were, a first run's folder stays absent."""
    from facesearch.cluster import cluster_folder
    from facesearch.embed import Embedder

    root, folder, checkpoint, _ = photos
    embedder = Embedder.for_queries(checkpoint, device="cpu")
    every = sorted(folder.iterdir())
    out = tmp_path / "clusters"

    class Stop(Exception):
        pass

    def stop_after(calls: int):
        seen = []

        def progress(photos: int) -> None:
            seen.append(photos)
            if len(seen) > calls:
                raise Stop
        return progress, seen

    progress, seen = stop_after(2)
    with pytest.raises(Stop):
        cluster_folder(every, out, embedder, progress=progress)
    assert seen == [1, 1, 1] and not (out / "clusters.json").exists()
    assert not list(out.rglob("*.jpg"))  # the crops of the three photos looked at, removed

    cluster_folder(every[:3], out, embedder)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert any(p.suffix == ".jpg" for p in before)
    progress, seen = stop_after(2)  # the 3 photos clustered already, then the 2 new ones, stopped at the second
    with pytest.raises(Stop):
        cluster_folder(every, out, embedder, progress=progress)
    assert seen == [3, 1, 1]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_naming_a_group_whose_faces_are_another_identitys_says_whose_and_claims_no_name(photos, tmp_path):
    import csv

    root, folder, checkpoint, _ = photos
    out, gallery = tmp_path / "clusters", tmp_path / "g"
    run("cluster", folder, "--out", out, "-c", checkpoint, "--eps", "0.25", "--min-size", "2", "--device", "cpu")
    rows = list(csv.DictReader(open(out / "faces.csv")))
    # a group of a single photo's face and its copy in the group photo (the only faces this close)
    single = next(r for r in rows if r["group"] != "-1" and r["n_faces"] == "1")
    group = single["group"]
    assert sum(r["group"] == group for r in rows) == 2
    run("enroll", single["photo"], "--name", "a", "-g", gallery, "-c", checkpoint, "--device", "cpu")
    some = run("clusters", "name", out, group, "B", "-g", gallery, ok=False)
    assert some.exit_code == 2 and f"1 already enrolled as 'a' (faces {single['face_id']})" in some.stdout
    assert "1 of 2 faces not enrolled as 'B'" in some.stderr
    assert json.loads(run("clusters", "show", out, "--json").stdout)["group_list"][0]["name"] == "B"
    stored = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    none = run("clusters", "name", out, group, "C", "-g", gallery, "--json", ok=False)  # one face 'a''s, one 'B''s
    message = json.loads(none.stdout)["error"]["message"]
    assert none.exit_code == 1 and "none of its 2 faces enrolled as 'C'" in message
    assert "'a' (1 faces)" in message and "'B' (1 faces)" in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == stored  # still 'B', nothing pinned
    names = {i["name"] for i in json.loads(run("identities", "list", "-g", gallery, "--json").stdout)}
    assert names == {"a", "B"}


def test_a_reader_beside_a_save_gets_one_saves_files_never_a_mix(tmp_path, monkeypatch):
    """The pages read a clusters folder while a clustering writes it: a read between the save's renames waits
    for the whole new set instead of pairing one save's faces.csv with another's embeddings.npy."""
    import threading

    from facesearch.cluster import FaceRow, files

    x, _ = people_vectors(np.random.default_rng(3))
    old = _clusters(tmp_path, x[:20])
    files.save(old)
    new = _clusters(tmp_path, x)
    new.rows = [FaceRow(i + 1, f"/p/{i}.jpg", f"sha{i}", [0, 0, 10, 10], 0.99, 1) for i in range(len(x))]

    renamed, release = threading.Event(), threading.Event()
    real_replace = files.os.replace

    def replace_then_pause(src, dst):
        real_replace(src, dst)
        if Path(dst).name == files.FACES_NAME:  # the new faces.csv is in place, the old embeddings still
            renamed.set()
            release.wait(5)

    monkeypatch.setattr(files.os, "replace", replace_then_pause)
    writer = threading.Thread(target=files.save, args=(new,))
    writer.start()
    assert renamed.wait(5)
    read = {}
    reader = threading.Thread(target=lambda: read.update(c=files.load(tmp_path)))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # the mixed set is not taken: the reader waits
    release.set()
    writer.join(5)
    reader.join(5)
    assert len(read["c"].rows) == len(read["c"].vectors) == len(x)
    np.testing.assert_array_equal(read["c"].vectors, x.astype(np.float32))


def test_a_clusters_folder_changed_by_hand_is_refused_with_its_reason(tmp_path):
    from facesearch.cluster import ClusterError, files

    x, _ = people_vectors(np.random.default_rng(4))
    files.save(_clusters(tmp_path, x))
    assert len(files.load(tmp_path).rows) == len(x)
    np.save(tmp_path / files.EMBEDDINGS_NAME, x[:-1])
    with pytest.raises(ClusterError, match="not one save's .*changed by hand"):
        files.load(tmp_path, wait=0.1)
    state = json.loads((tmp_path / files.STATE_NAME).read_text())
    del state["digests"]  # a folder written before the digests: the counts are checked
    (tmp_path / files.STATE_NAME).write_text(json.dumps(state))
    with pytest.raises(ClusterError, match=f"{len(x)} faces, {len(x) - 1} embeddings"):
        files.load(tmp_path, wait=0.1)
    np.save(tmp_path / files.EMBEDDINGS_NAME, x)
    assert len(files.load(tmp_path).rows) == len(x)
