"""Name the people in unlabelled photos: every face of a folder found, embedded and grouped by person.

``cluster_folder`` finds every face of every photo with the face finder and embedder ``who`` uses
(``Embedder.for_queries``), groups the embeddings with scikit-learn's density clustering (``group_faces``:
the algorithm and its settings were chosen by ``bench/cluster.py``, see docs/BENCHMARKS.md), and keeps the
result in a folder that later runs and edits build on::

    CLUSTERS/faces.csv        one row per face: face id, photo, content hash, box, group, distance to the group's
                              centre, the gallery identity it matches, and whether a person placed it
    CLUSTERS/embeddings.npy   (faces, d) float32, in faces.csv order
    CLUSTERS/clusters.json    the model, the settings, and per group its name and size
    CLUSTERS/crops/<id>.jpg   each face as the model saw it; CLUSTERS/sheets/group-<g>.png a contact sheet per group

Faces that fit no group are unclustered (group -1), never forced into one. Re-running over the folder embeds
only new photos, clusters everything again and gives each new group the id (and name) of the old group whose
faces it holds most of, so names survive. Edits by a person are kept over later runs: a face moved into a
group (``merge``) stays there, a face taken out (``remove``) stays out. One clusters folder holds one photo
collection: a run that would drop the faces of photos still on disk but not given (another folder clustered into
the same CLUSTERS) is refused; photos deleted since go, photos moved are found again by their content.

The package: ``grouping`` (the algorithm, in memory), ``files`` (what a clusters folder holds), ``sheets`` (the
drawing), ``folder`` (clustering photos into a folder and editing it: where those meet the embedder and gallery).
"""

from facesearch.cluster.files import EMBEDDINGS_NAME, FACES_NAME, STATE_NAME, load, save
from facesearch.cluster.folder import ClusterReport, cluster_folder, edit, name_group
from facesearch.cluster.grouping import (
    ALGORITHMS, UNCLUSTERED, ClusterError, ClusterNotFound, Clusters, ClusterSettings, FaceRow, group_faces, merge,
    regroup, remove, split,
)
from facesearch.cluster.sheets import draw_sheets

__all__ = [
    "ALGORITHMS", "EMBEDDINGS_NAME", "FACES_NAME", "STATE_NAME", "UNCLUSTERED", "ClusterError", "ClusterNotFound",
    "ClusterReport",
    "ClusterSettings", "Clusters", "FaceRow", "cluster_folder", "draw_sheets", "edit", "group_faces", "load", "merge",
    "name_group", "regroup", "remove", "save", "split",
]
