#!/usr/bin/env node
// Classify PNG images with a medvit-edge raw-input model (e.g. model.int8.raw.onnx) from Node.js.
//
//   npm ci --ignore-scripts        # onnxruntime-node's CPU build ships in the package
//   node index.js ../../models/run/onnx/model.int8.raw.onnx scan1.png scan2.png
//
// Only onnxruntime-node and a PNG decoder (pngjs): resizing, cropping and normalising happen
// inside the model, and so are the model's decision policy (temperature, operating point, refer
// rule): its outputs are the calibrated `probabilities` and the `decision` (the decided label's
// index, -1 for "refer"), exactly what the Python runtime reports. One JSON line per image on
// stdout: {"path", "label" (the most probable class), "probabilities", "decision"}.
// An image that cannot be read is one line on stderr; the exit code is then 1.
'use strict';

const fs = require('fs');
const ort = require('onnxruntime-node');
const { PNG } = require('pngjs');

// onnxruntime-node exposes no custom metadata, so read the ONNX file's metadata_props (ModelProto
// field 14: key = 1, value = 2) with a minimal protobuf walk over the top-level fields.
function readVarint(buf, pos) {
  let value = 0;
  let shift = 1;
  for (;;) {
    const byte = buf[pos++];
    value += (byte & 0x7f) * shift;
    if (byte < 0x80) return [value, pos];
    shift *= 128;
  }
}

function* fields(buf, start = 0, end = buf.length) {
  let pos = start;
  while (pos < end) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const number = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      [, pos] = readVarint(buf, pos);
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else if (wire === 2) {
      let length;
      [length, pos] = readVarint(buf, pos);
      yield [number, buf.subarray(pos, pos + length)];
      pos += length;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

function customMetadata(modelBytes) {
  const props = {};
  for (const [number, entry] of fields(modelBytes)) {
    if (number !== 14) continue;
    const pair = {};
    for (const [field, bytes] of fields(entry)) pair[field] = bytes.toString('utf8');
    props[pair[1]] = pair[2];
  }
  return props;
}

// Decode to 8-bit RGB the way the Python runtime does: grey repeated into three channels
// (pngjs always gives RGBA), alpha composited over black with Pillow's integer formula,
// 16-bit samples scaled by 255/65535 (pngjs).
function rgbFromPng(path) {
  const png = PNG.sync.read(fs.readFileSync(path));
  const { width, height, data } = png;
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < data.length; i += 4, j += 3) {
    const alpha = data[i + 3];
    for (let c = 0; c < 3; c++) {
      const t = data[i + c] * alpha * 128 + (0x80 << 7);
      rgb[j + c] = (((t >> 8) + t) >> 8) >> 7;
    }
  }
  return { rgb, width, height };
}

async function main() {
  const [modelPath, ...imagePaths] = process.argv.slice(2);
  if (!modelPath || imagePaths.length === 0) {
    console.error('usage: node index.js MODEL.raw.onnx IMAGE.png [IMAGE.png ...]');
    process.exit(2);
  }
  const metadata = customMetadata(fs.readFileSync(modelPath));
  if (metadata.input !== 'raw-uint8-nhwc') {
    console.error(`${modelPath}: not a raw-input model (export it with --raw-input)`);
    process.exit(2);
  }
  const labels = JSON.parse(metadata.labels);
  const session = await ort.InferenceSession.create(modelPath); // 1. load
  let failed = 0;
  for (const path of imagePaths) {
    let image;
    try {
      image = rgbFromPng(path);
    } catch (err) {
      console.error(`${path}: cannot decode PNG (${err.message})`);
      failed++;
      continue;
    }
    const tensor = new ort.Tensor('uint8', image.rgb, [1, image.height, image.width, 3]); // 2. input
    const outputs = await session.run({ image: tensor }); // 3. run
    const scores = outputs.probabilities.data; // 4. read: calibrated [1, classes] and [1] decision
    let best = 0;
    for (let k = 1; k < labels.length; k++) if (scores[k] > scores[best]) best = k;
    const probabilities = Object.fromEntries(labels.map((label, k) => [label, scores[k]]));
    const index = Number(outputs.decision.data[0]); // int64 arrives as a BigInt
    const decision = index < 0 ? 'refer' : labels[index];
    console.log(JSON.stringify({ path, label: labels[best], probabilities, decision }));
  }
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.error(err.message || err);
  process.exit(2);
});
