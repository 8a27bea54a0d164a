"""Reads exported shards with plain tarfile and with the webdataset library and prints one JSON
summary, so the Swift tests can check both readers agree with the index.

usage: read_shards.py INDEX_JSON
"""
import json
import os
import sys
import tarfile

import webdataset as wds


def main() -> None:
    index_path = sys.argv[1]
    index = json.load(open(index_path))
    folder = os.path.dirname(index_path)
    shards = [os.path.join(folder, s["name"]) for s in index["shards"]]
    tar_keys = []
    for path in shards:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.load(tar.extractfile(member))
                    tar_keys.append((meta["key"], meta["identity"], meta["role"]))
    wds_samples = []
    for sample in wds.WebDataset(shards, shardshuffle=False):
        wds_samples.append({"key": sample["__key__"], "fields": sorted(k for k in sample if not k.startswith("__")),
                            "png_bytes": len(sample["png"]), "e4e_bytes": len(sample["e4e.png"])})
    print(json.dumps({"tarfile": tar_keys, "webdataset": wds_samples}))


if __name__ == "__main__":
    main()
