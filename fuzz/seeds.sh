#!/usr/bin/env bash
# Writes valid frames into the fuzz corpora so the fuzzer starts past the KID lookup (SFrame)
# or the codec's header checks (video).
# Input layout of sframe_decrypt: [metadata length][metadata][frame].
set -euo pipefail
cd "$(dirname "$0")"
sotto=${SOTTO:-../target/debug/sotto}
key=$(printf 'fuzzing base key' | xxd -p)
mkdir -p corpus/sframe_decrypt corpus/sframe_roundtrip
for suite in 1 2 3 4 5; do
  for ctr in 0 9 300 70000; do
    frame=$("$sotto" sframe encrypt --suite "$suite" --key "$key" --kid "$suite" --ctr "$ctr" 00112233445566778899)
    printf '00%s' "$frame" | xxd -r -p > "corpus/sframe_decrypt/seed-$suite-$ctr"
    frame=$("$sotto" sframe encrypt --suite "$suite" --key "$key" --kid "$suite" --ctr "$ctr" --metadata a1a2a3 00112233445566778899)
    printf '03a1a2a3%s' "$frame" | xxd -r -p > "corpus/sframe_decrypt/seed-meta-$suite-$ctr"
  done
done
frame=$("$sotto" sframe encrypt --suite 4 --key "$key" --kid 4660 --ctr 1 cafe)
printf '00%s' "$frame" | xxd -r -p > corpus/sframe_decrypt/seed-longkid
head -c 64 /dev/zero > corpus/sframe_roundtrip/seed-zero

# Video targets: each binary writes its own starting inputs into the directory named by
# SOTTO_FUZZ_SEEDS and exits (vp8_decode: the engine's TestPattern, VP8-encoded). They need
# `RUSTC_BOOTSTRAP=1 cargo fuzz build` first.
bin=target/x86_64-unknown-linux-gnu/release
for target in vp8_decode video_open y4m_source; do
  if [ -x "$bin/$target" ]; then
    SOTTO_FUZZ_SEEDS="corpus/$target" "$bin/$target"
  else
    echo "seeds.sh: $bin/$target not built; skipping its seeds" >&2
  fi
done
