#!/usr/bin/env bash
# Fetches the dlib models and the sample photos into the cache (default ~/.cache/pidiff-data,
# override with PIDIFF_CACHE). Idempotent: every download is verified by SHA-256 and skipped
# when the verified file is already there. Network is needed only the first time.
set -euo pipefail

CACHE="${PIDIFF_CACHE:-$HOME/.cache/pidiff-data}"
PY="${PYTHON:-python3}"
mkdir -p "$CACHE/sdists" "$CACHE/models" "$CACHE/sample"

# name|sha256 of the PyPI source distributions we take files from.
SDISTS=(
  "face_recognition_models-0.3.0.tar.gz|b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf|face-recognition-models==0.3.0"
  "face_recognition-1.3.0.tar.gz|5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec|face_recognition==1.3.0"
)

verify() { echo "$2  $1" | sha256sum --check --status; }

for entry in "${SDISTS[@]}"; do
  IFS='|' read -r file sha spec <<<"$entry"
  path="$CACHE/sdists/$file"
  if [[ -f "$path" ]] && verify "$path" "$sha"; then continue; fi
  echo "fetching $spec (PyPI sdist)"
  rm -f "$path"
  # Without build isolation pip reuses the installed setuptools (fast, offline-friendly) but needs
  # `wheel` to read the sdist's metadata; where that is missing, the isolated download fetches its
  # own. The first attempt's messages are shown only if both fail.
  log="$(mktemp)"
  if ! "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation "$spec" -d "$CACHE/sdists" 2>"$log"; then
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "$spec" -d "$CACHE/sdists" || { cat "$log" >&2; rm -f "$log"; exit 1; }
  fi
  rm -f "$log"
  verify "$path" "$sha" || { echo "checksum mismatch for $path" >&2; exit 1; }
done

# Models: the 68-point predictor from Debian's libdlib-data, the others from face-recognition-models.
if [[ -f /usr/share/dlib/shape_predictor_68_face_landmarks.dat ]]; then
  ln -sf /usr/share/dlib/shape_predictor_68_face_landmarks.dat "$CACHE/models/shape_predictor_68_face_landmarks.dat"
fi
for m in shape_predictor_5_face_landmarks.dat mmod_human_face_detector.dat dlib_face_recognition_resnet_model_v1.dat \
         shape_predictor_68_face_landmarks.dat; do
  [[ -e "$CACHE/models/$m" ]] && continue
  tar -xzf "$CACHE/sdists/face_recognition_models-0.3.0.tar.gz" -C "$CACHE/models" --strip-components=3 \
    "face_recognition_models-0.3.0/face_recognition_models/models/$m"
done
(cd "$CACHE/models" && sha256sum --check --quiet <<EOS
fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f  shape_predictor_68_face_landmarks.dat
c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888  shape_predictor_5_face_landmarks.dat
4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6  mmod_human_face_detector.dat
55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30  dlib_face_recognition_resnet_model_v1.dat
EOS
) || { echo "model checksum mismatch in $CACHE/models" >&2; exit 1; }

# Sample photos: face_recognition's test images, arranged as identity folders.
SAMPLE="$CACHE/sample"
if [[ ! -f "$SAMPLE/.complete" ]]; then
  tmp="$(mktemp -d)"
  tar -xzf "$CACHE/sdists/face_recognition-1.3.0.tar.gz" -C "$tmp" face_recognition-1.3.0/tests/test_images
  src="$tmp/face_recognition-1.3.0/tests/test_images"
  rm -rf "$SAMPLE/identities" && mkdir -p "$SAMPLE/identities/obama" "$SAMPLE/identities/biden" "$SAMPLE/identities/unlabelled"
  cp "$src"/obama.jpg "$src"/obama2.jpg "$src"/obama3.jpg "$src"/obama_partial_face.jpg "$src"/obama_partial_face2.jpg "$SAMPLE/identities/obama/"
  cp "$src"/biden.jpg "$SAMPLE/identities/biden/"
  cp "$src"/32bit.png "$SAMPLE/identities/unlabelled/"
  rm -rf "$tmp"
  touch "$SAMPLE/.complete"
fi
# The sample manifest (Manifests/sample.jsonl) lists paths relative to the sample folder.
cp "$(dirname "$0")/../Manifests/sample.jsonl" "$SAMPLE/manifest.jsonl"
echo "assets ready in $CACHE"
