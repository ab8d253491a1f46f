// The official Node SDKs (`openai`, `@anthropic-ai/sdk`) through the real keyproxy binary, against the
// stand-in provider that tests/sdk/test_sdks.py started: chat and messages, streamed and not, and for
// each refusal that `err.message` (the exception's own text) carries keyproxy's sentence and reason
// code, with answers no retry can fix asked once. Usage: node sdks.cjs PROXY_URL
// (NODE_PATH names the node_modules that .ci/run installed the SDKs into).

const assert = require("node:assert/strict");
const OpenAI = require("openai").default;
const Anthropic = require("@anthropic-ai/sdk").default;

const proxy = process.argv[2];
const HI = [{ role: "user", content: "hi" }];

/** A fetch that counts the requests an SDK sends, retries included. */
function counting() {
  const counter = { count: 0 };
  counter.fetch = (...args) => {
    counter.count += 1;
    return fetch(...args);
  };
  return counter;
}

function openai(prefix, options = {}) {
  return new OpenAI({ baseURL: `${proxy}${prefix}/v1`, apiKey: "unused-dummy", ...options });
}

function anthropic(prefix, options = {}) {
  return new Anthropic({ baseURL: `${proxy}${prefix}`, apiKey: "unused-dummy", ...options });
}

async function refusal(call) {
  try {
    await call();
  } catch (err) {
    return err;
  }
  assert.fail("the call did not fail");
}

const checks = {
  async openaiChat() {
    const reply = await openai("").chat.completions.create({ model: "gpt-4o-mini", messages: HI });
    assert.equal(reply.choices[0].message.content, "Hello from the stand-in");
  },

  async openaiStream() {
    const stream = await openai("").chat.completions.create({ model: "gpt-4o-mini", messages: HI, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
    assert.equal(text, "Hello from the stand-in");
  },

  async anthropicMessage() {
    const message = await anthropic("/anthropic").messages.create({ model: "claude-3-5-haiku-latest", max_tokens: 64, messages: HI });
    assert.equal(message.content[0].text, "Hello from the stand-in");
  },

  async anthropicStream() {
    const stream = anthropic("/anthropic").messages.stream({ model: "claude-3-5-haiku-latest", max_tokens: 64, messages: HI });
    let text = "";
    for await (const event of stream) {
      if (event.type === "content_block_delta") text += event.delta.text;
    }
    assert.equal(text, "Hello from the stand-in");
  },

  async openaiInvalidKey() {
    const counter = counting();
    const err = await refusal(() => openai("/stale", { fetch: counter.fetch }).chat.completions.create({ model: "gpt-4o-mini", messages: HI }));
    assert.ok(err instanceof OpenAI.AuthenticationError, String(err));
    assert.match(err.message, /^401 Incorrect API key provided/);
    assert.ok(err.message.includes(" — keyproxy: stale rejected the key"), err.message);
    assert.ok(err.message.includes("(reason: invalid_key)"), err.message);
    assert.equal(counter.count, 1);
  },

  async anthropicInvalidKey() {
    const err = await refusal(() => anthropic("/stale-anthropic").messages.create({ model: "claude-3-5-haiku-latest", max_tokens: 64, messages: HI }));
    assert.ok(err instanceof Anthropic.AuthenticationError, String(err));
    assert.ok(err.message.includes("invalid x-api-key — keyproxy: stale_anthropic rejected the key"), err.message);
    assert.ok(err.message.includes("(reason: invalid_key)"), err.message);
  },

  async openaiQuotaExhaustedIsAskedOnce() {
    const counter = counting();
    const err = await refusal(() => openai("/quota", { fetch: counter.fetch }).chat.completions.create({ model: "gpt-4o-mini", messages: HI }));
    assert.ok(err instanceof OpenAI.RateLimitError, String(err));
    assert.ok(err.message.includes("(reason: quota_exhausted)") && err.message.includes("no quota or credit left"), err.message);
    assert.equal(counter.count, 1, "default retries, yet asked once");
  },

  async openaiRateLimitIsRetried() {
    const counter = counting();
    const err = await refusal(() => openai("/rated", { fetch: counter.fetch, maxRetries: 2 }).chat.completions.create({ model: "gpt-4o-mini", messages: HI }));
    assert.ok(err.message.includes("(reason: rate_limited)"), err.message);
    assert.equal(counter.count, 3);
  },

  async openaiNoUsableKeyIsOneRoundTrip() {
    const counter = counting();
    const started = performance.now();
    const err = await refusal(() => openai("/nokey", { fetch: counter.fetch }).chat.completions.create({ model: "gpt-4o-mini", messages: HI }));
    assert.equal(err.status, 503);
    assert.match(err.message, /^503 keyproxy has no usable key for upstream nokey/);
    assert.ok(err.message.includes("(reason: missing_key)"), err.message);
    assert.equal(counter.count, 1);
    console.log(`node openai, no usable key: the exception after ${Math.round(performance.now() - started)} ms, 1 attempt`);
  },

  async anthropicNoUsableKeyInAnthropicsShape() {
    const counter = counting();
    const err = await refusal(() => anthropic("/nokey-anthropic", { fetch: counter.fetch }).messages.create({ model: "claude-3-5-haiku-latest", max_tokens: 64, messages: HI }));
    assert.equal(err.status, 503);
    assert.equal(err.type, "api_error", "Anthropic's shape: error.type is read");
    assert.match(err.message, /^503 keyproxy has no usable key for upstream nokey_anthropic/);
    assert.ok(err.message.includes("(reason: missing_key)"), err.message);
    assert.equal(counter.count, 1);
  },
};

(async () => {
  let failed = 0;
  for (const [name, check] of Object.entries(checks)) {
    try {
      await check();
      console.log(`ok ${name}`);
    } catch (err) {
      failed += 1;
      console.log(`FAILED ${name}: ${err.stack || err}`);
    }
  }
  process.exit(failed ? 1 : 0);
})();
