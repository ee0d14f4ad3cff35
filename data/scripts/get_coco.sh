#!/usr/bin/env bash
# Download COCO 2017 images and the official annotations into ../coco (relative to the repository root),
# then build YOLO labels and image lists with utils.coco2yolo (no third-party label archives).
# Usage: bash data/scripts/get_coco.sh [target_dir]   (about 20 GB; needs curl and unzip)
set -euo pipefail
cd "$(dirname "$0")/../.."  # repository root
root=$(pwd)
dir=${1:-../coco}
mkdir -p "$dir/images" "$dir/labels"
base=http://images.cocodataset.org
for f in zips/train2017.zip zips/val2017.zip zips/test2017.zip annotations/annotations_trainval2017.zip \
         annotations/image_info_test2017.zip; do
  name=$(basename "$f")
  [ -f "$dir/$name" ] || curl -L --fail -o "$dir/$name" "$base/$f"
done
(cd "$dir/images" && for s in train2017 val2017 test2017; do [ -d $s ] || unzip -q "../$s.zip"; done)
(cd "$dir" && unzip -qo annotations_trainval2017.zip && unzip -qo image_info_test2017.zip)
for s in train2017 val2017; do
  (cd "$root" && python -m utils.coco2yolo "$dir/annotations/instances_$s.json" "$dir/labels/$s" \
      --list "$dir/$s.txt" --images-prefix "./images/$s")
done
python - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
info = json.load(open(f'{d}/annotations/image_info_test-dev2017.json'))
open(f'{d}/test-dev2017.txt', 'w').writelines(f"./images/test2017/{im['file_name']}\n" for im in sorted(info['images'], key=lambda x: x['file_name']))
PY
echo "COCO ready in $dir"
