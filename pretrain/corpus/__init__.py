"""Build a pretraining corpus of real audio from Debian packages.

    python -m pretrain corpus --out data/pretrain_corpus

Steps, per package of `SOURCES` (the catalogue, sources.yaml; a tqdm bar over packages, one
over files, log lines):

1. fetch: `apt-get download` + `dpkg-deb -x` (pretrain.debian.fetch_package), once.
2. extract (archives.py): audio members of game archives (.pk3 / .zip / .wz: zip files) are
   extracted under `unpacked/PACKAGE/_archives/ARCHIVE_PATH/`.
3. scan (scan.py): every audio file soundfile decodes is decoded once, giving its length, a
   content hash and a fingerprint (audio_analysis.py). Cached in `scan/PACKAGE.*`, so a
   rerun skips finished packages.

Then, over all packages (pipeline.py):

4. filter: files shorter than `MIN_SECONDS` and digitally silent files are dropped.
5. exact duplicates (duplicates.py): the same content hash, i.e. the same decoded samples,
   whatever the container, tags or file name.
6. near duplicates (duplicates.py; the same recording re-encoded, resampled, at another
   gain, or trimmed): candidate pairs by fingerprint, confirmed by the waveforms'
   cross-correlation, joined into groups. Each group of duplicates keeps one file: the
   highest sample rate, then the longest, then the earliest package, then the path.
   Compared pairs are cached in scan/near_pairs.tsv (pair_cache.py).
7. share cap (share_cap.py): no package may hold more than `MAX_SHARE` of the kept hours.

Outputs (report.py): `manifest.tsv` (path relative to the manifest, package, licence,
seconds, sample_rate, channels, content_sha256, category; pretrain.data reads it),
`dedup.tsv` (every dropped file, why, and which kept file it duplicates), `SOURCES.md`
(per-package table, what each step removed, durations, disk use, corpus hash) and
`corpus.json` (the same, machine-readable). The corpus hash is sha256 over the sorted lines
"package<TAB>path inside the package<TAB>content_sha256" of the kept files (`corpus_hash`):
it changes when any kept audio changes, and not with the output folder or row order.

The sources are disjoint from the packages of the offline evaluation suite's projects
(`pretrain.debian.is_eval_package`; `build` refuses them) and from the packages reserved
for held-out evaluation by people outside this project (and the other packages of their
projects), whose names only the guard test tests/test_data_sources.py holds; it checks
SOURCES against both. Clips are not committed: their
licences (mostly GPL / CC-BY-SA) travel with the packages, the manifest records each
package's, and /usr/share/doc/PACKAGE/copyright has per-file terms.
"""
from .audio_analysis import content_hash, fingerprint
from .duplicates import NEAR_CANDIDATE, NEAR_NCC, near_duplicate
from .pipeline import MIN_SECONDS, build
from .report import MANIFEST_COLUMNS, corpus_hash
from .share_cap import MAX_SHARE, cap_shares, share_ceiling
from .sources import CATEGORIES, SOURCES, Source

__all__ = ["build", "SOURCES", "Source", "CATEGORIES", "MIN_SECONDS", "MAX_SHARE", "MANIFEST_COLUMNS",
           "NEAR_CANDIDATE", "NEAR_NCC", "near_duplicate", "fingerprint", "content_hash", "corpus_hash",
           "cap_shares", "share_ceiling"]
