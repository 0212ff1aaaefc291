// A second-language Open Inference Protocol client: Node's @grpc/grpc-js against mdn-serve.
// usage: node oip_check.js HOST:PORT MODEL PROTO_FILE   (prints what it saw as JSON)
"use strict";

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [target, model, protoFile] = process.argv.slice(2);
const definition = protoLoader.loadSync(protoFile, { keepCase: true, longs: String, defaults: true });
const inference = grpc.loadPackageDefinition(definition).inference;
const client = new inference.GRPCInferenceService(target, grpc.credentials.createInsecure());

const call = (method, request) =>
  new Promise((resolve) =>
    client[method](request, { deadline: Date.now() + 10000 }, (err, response) =>
      resolve(err ? { code: err.code, details: err.details } : { response })
    )
  );

function floats(buffer) {
  const out = [];
  for (let i = 0; i < buffer.length; i += 4) out.push(buffer.readFloatLE(i));
  return out;
}

async function main() {
  const x = Buffer.alloc(16);
  [0.6, 0.6, 0.9, 0.3].forEach((v, i) => x.writeFloatLE(v, 4 * i));
  const ready = await call("ServerReady", {});
  const meta = await call("ModelMetadata", { name: model });
  const infer = await call("ModelInfer", {
    model_name: model,
    id: "node-1",
    inputs: [{ name: "x", datatype: "FP32", shape: [2, 2] }],
    outputs: [{ name: "means" }, { name: "num_modes" }],
    raw_input_contents: [x],
  });
  const bad = await call("ModelInfer", { model_name: "no_such_model", inputs: [], raw_input_contents: [] });
  const r = infer.response;
  console.log(
    JSON.stringify({
      ready: ready.response.ready,
      platform: meta.response.platform,
      id: r.id,
      version: r.model_version,
      outputs: r.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape.map(Number) })),
      means: floats(r.raw_output_contents[0]),
      num_modes: Array.from({ length: r.raw_output_contents[1].length / 4 }, (_, i) =>
        r.raw_output_contents[1].readInt32LE(4 * i)
      ),
      unknown_model_code: bad.code,
    })
  );
  client.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
