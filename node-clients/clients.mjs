// The Node clients people use, against a running router whose providers are the emulator.
// Usage: node clients.mjs <router base URL>. Prints one JSON object: check name -> "ok" or the failure.
// Run by tests/e2e/test_node_clients.py (which installs the pinned packages here with `npm ci`).
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { generateText, streamText, generateObject, jsonSchema } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const base = process.argv[2];
const say = (spec) => `${Math.random().toString(16).slice(2, 10)}\nemulate: ${JSON.stringify({ "*": spec })}`;
const eq = (got, want, what) => {
  if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
};

const oai = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const ant = new Anthropic({ baseURL: base, apiKey: "unused", maxRetries: 0 });
const vercel = createOpenAI({ baseURL: `${base}/v1`, apiKey: "unused" });
const weather = { type: "function", function: { name: "weather", parameters: { type: "object", properties: { city: { type: "string" } } } } };

const checks = {
  "openai: chat text": async () => {
    const r = await oai.chat.completions.create({ model: "glm_task", messages: [{ role: "user", content: say({ text: "Four." }) }] });
    eq(r.choices[0].message.content, "Four.", "content"); eq(r.model, "glm-4.6", "model");
  },
  "openai: chat stream with usage": async () => {
    const s = await oai.chat.completions.create({ model: "claude_task", stream: true, stream_options: { include_usage: true },
      messages: [{ role: "user", content: say({ text: "one two", output_tokens: 2 }) }] });
    let text = "", usage = null;
    for await (const c of s) { text += c.choices[0]?.delta?.content ?? ""; if (c.usage) usage = c.usage; }
    eq(text, "one two", "text"); eq(usage.completion_tokens, 2, "usage");
  },
  "openai: tool call": async () => {
    const r = await oai.chat.completions.create({ model: "glm_task", tools: [weather], messages: [{ role: "user",
      content: say({ tool_calls: [{ id: "call_1", name: "weather", arguments: { city: "Oslo" } }] }) }] });
    const tc = r.choices[0].message.tool_calls[0];
    eq([tc.function.name, JSON.parse(tc.function.arguments)], ["weather", { city: "Oslo" }], "tool call");
  },
  "openai: unknown model is NotFoundError": async () => {
    try { await oai.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] }); }
    catch (e) { if (e instanceof OpenAI.NotFoundError) return; throw e; }
    throw new Error("no error");
  },
  "openai: responses.create": async () => {
    const r = await oai.responses.create({ model: "glm_task", input: say({ text: "Four." }) });
    eq(r.output_text, "Four.", "output_text");
  },
  "openai: responses.stream": async () => {
    const s = oai.responses.stream({ model: "claude_task", input: say({ text: "a b c" }) });
    let deltas = "";
    for await (const e of s) if (e.type === "response.output_text.delta") deltas += e.delta;
    const final = await s.finalResponse();
    eq([deltas, final.output_text], ["a b c", "a b c"], "stream");
  },
  "anthropic: messages.create": async () => {
    const m = await ant.messages.create({ model: "claude_task", max_tokens: 64, messages: [{ role: "user", content: say({ text: "Hi." }) }] });
    eq([m.content[0].text, m.model, m.stop_reason], ["Hi.", "claude-sonnet-5-5", "end_turn"], "message");
  },
  "anthropic: messages.stream": async () => {
    const s = ant.messages.stream({ model: "glm_task", max_tokens: 64, messages: [{ role: "user", content: say({ text: "one two three" }) }] });
    const m = await s.finalMessage();
    eq(m.content.map((b) => b.text).join(""), "one two three", "text");
  },
  "anthropic: tool_use": async () => {
    const m = await ant.messages.create({ model: "claude_task", max_tokens: 64,
      tools: [{ name: "weather", input_schema: { type: "object", properties: { city: { type: "string" } } } }],
      messages: [{ role: "user", content: say({ tool_calls: [{ id: "toolu_1", name: "weather", arguments: { city: "Rome" } }] }) }] });
    const b = m.content.find((x) => x.type === "tool_use");
    eq([b.name, b.input, m.stop_reason], ["weather", { city: "Rome" }, "tool_use"], "tool_use");
  },
  "anthropic: countTokens": async () => {
    const c = await ant.messages.countTokens({ model: "claude_task", messages: [{ role: "user", content: "Count me." }] });
    if (!(c.input_tokens > 0)) throw new Error(`input_tokens ${c.input_tokens}`);
  },
  "anthropic: unknown model is NotFoundError": async () => {
    try { await ant.messages.create({ model: "nope", max_tokens: 9, messages: [{ role: "user", content: "x" }] }); }
    catch (e) { if (e instanceof Anthropic.NotFoundError) return; throw e; }
    throw new Error("no error");
  },
  "openai: structured output, valid and invalid": async () => {
    const rf = { type: "json_schema", json_schema: { name: "w", strict: true, schema: { type: "object",
      properties: { city: { type: "string" }, temp: { type: "number" } }, required: ["city", "temp"], additionalProperties: false } } };
    const r = await oai.chat.completions.create({ model: "glm_task", response_format: rf, messages: [{ role: "user", content: "Weather?" }] });
    eq(JSON.parse(r.choices[0].message.content), { city: "", temp: 0 }, "object");
    try { await oai.chat.completions.create({ model: "glm_task", response_format: rf, messages: [{ role: "user", content: say({ text: "nope" }) }] }); }
    catch (e) { if (e instanceof OpenAI.APIError && e.status === 502) return; throw e; }
    throw new Error("an invalid answer was accepted");
  },
  "openai: image": async () => {
    const r = await oai.chat.completions.create({ model: "claude_task", messages: [{ role: "user", content: [
      { type: "text", text: "What is this?" }, { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } }] }] });
    eq(r.choices[0].message.content, "I see 1 image(s) or document(s) (the claude-sonnet-5-5 emulator).", "content");
  },
  "anthropic: thinking with a signature": async () => {
    const m = await ant.messages.create({ model: "claude_task", max_tokens: 2048, thinking: { type: "enabled", budget_tokens: 1024 },
      messages: [{ role: "user", content: say({ reasoning: "Let me think.", text: "Done." }) }] });
    const t = m.content.find((b) => b.type === "thinking");
    eq([t.thinking, typeof t.signature, m.content.at(-1).text], ["Let me think.", "string", "Done."], "thinking");
  },
  "anthropic: image block": async () => {
    const m = await ant.messages.create({ model: "claude_task", max_tokens: 64, messages: [{ role: "user", content: [
      { type: "image", source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" } }, { type: "text", text: "And this?" }] }] });
    if (!m.content[0].text.includes("1 image(s)")) throw new Error(m.content[0].text);
  },
  "openai: tools round trip": async () => {
    const first = [{ role: "user", content: say({ tool_calls: [{ id: "call_9", name: "weather", arguments: { city: "Oslo" } }] }) }];
    const r = await oai.chat.completions.create({ model: "claude_task", tools: [weather], messages: first });
    const m = r.choices[0].message;
    const again = await oai.chat.completions.create({ model: "claude_task", tools: [weather], messages: [
      { role: "user", content: say({ text: "Cold in Oslo." }) }, m,
      { role: "tool", tool_call_id: m.tool_calls[0].id, content: "-3C" }] });
    eq([m.tool_calls[0].id, again.choices[0].message.content], ["call_9", "Cold in Oslo."], "round trip");
  },
  "openai: GLM reasoning_content": async () => {
    const r = await oai.chat.completions.create({ model: "glm_task", messages: [{ role: "user", content: say({ reasoning: "Hmm.", text: "Yes." }) }] });
    eq([r.choices[0].message.reasoning_content, r.choices[0].message.content], ["Hmm.", "Yes."], "reasoning");
  },
  "openai: responses function_call round trip": async () => {
    const tool = { type: "function", name: "weather", parameters: weather.function.parameters, strict: false };
    const r = await oai.responses.create({ model: "glm_task", tools: [tool],
      input: say({ tool_calls: [{ id: "call_r", name: "weather", arguments: { city: "Rome" } }] }) });
    const call = r.output.find((o) => o.type === "function_call");
    const again = await oai.responses.create({ model: "glm_task", tools: [tool], input: [
      { role: "user", content: say({ text: "Warm in Rome." }) },
      { type: "function_call", call_id: call.call_id, name: call.name, arguments: call.arguments },
      { type: "function_call_output", call_id: call.call_id, output: "25C" }] });
    eq([JSON.parse(call.arguments), again.output_text], [{ city: "Rome" }, "Warm in Rome."], "round trip");
  },
  "openai: responses reasoning, structured output, image, NotFoundError": async () => {
    const s = oai.responses.stream({ model: "claude_task", reasoning: { effort: "medium" }, input: say({ reasoning: "Think.", text: "Ok." }) });
    let summary = ""; for await (const e of s) if (e.type === "response.reasoning_summary_text.delta") summary += e.delta;
    eq([summary, (await s.finalResponse()).output_text], ["Think.", "Ok."], "reasoning");
    const format = { type: "json_schema", name: "w", strict: true, schema: { type: "object", properties: { city: { type: "string" } },
      required: ["city"], additionalProperties: false } };
    const j = await oai.responses.create({ model: "glm_task", text: { format }, input: say({ text: '{"city":"Bergen"}' }) });
    eq(JSON.parse(j.output_text), { city: "Bergen" }, "structured");
    const img = await oai.responses.create({ model: "claude_task", input: [{ role: "user", content: [
      { type: "input_text", text: "What?" }, { type: "input_image", image_url: "data:image/png;base64,iVBORw0KGgo=", detail: "auto" }] }] });
    eq(img.output_text, "I see 1 image(s) or document(s) (the claude-sonnet-5-5 emulator).", "image");
    try { await oai.responses.create({ model: "nope", input: "x" }); }
    catch (e) { if (e instanceof OpenAI.NotFoundError) return; throw e; }
    throw new Error("no error");
  },
  "anthropic: tool_result round trip": async () => {
    const tools = [{ name: "weather", input_schema: { type: "object", properties: { city: { type: "string" } } } }];
    const m = await ant.messages.create({ model: "glm_task", max_tokens: 64, tools,
      messages: [{ role: "user", content: say({ tool_calls: [{ id: "toolu_9", name: "weather", arguments: { city: "Lima" } }] }) }] });
    const use = m.content.find((b) => b.type === "tool_use");
    const again = await ant.messages.create({ model: "glm_task", max_tokens: 64, tools, messages: [
      { role: "user", content: say({ text: "Mild in Lima." }) }, { role: "assistant", content: m.content },
      { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "18C" }] }] });
    eq([use.id, again.content[0].text], ["toolu_9", "Mild in Lima."], "round trip");
  },
  "anthropic: output_config structured output, valid and invalid": async () => {
    const output_config = { format: { type: "json_schema", schema: { type: "object", properties: { n: { type: "number" } },
      required: ["n"], additionalProperties: false } } };
    const m = await ant.messages.create({ model: "claude_task", max_tokens: 64, output_config,
      messages: [{ role: "user", content: say({ text: '{"n": 4}' }) }] });
    eq(JSON.parse(m.content[0].text), { n: 4 }, "object");
    try { await ant.messages.create({ model: "claude_task", max_tokens: 64, output_config, messages: [{ role: "user", content: say({ text: "four" }) }] }); }
    catch (e) { if (e instanceof Anthropic.APIError && e.status === 502) return; throw e; }
    throw new Error("an invalid answer was accepted");
  },
  "vercel ai: generateText (default provider: Responses API)": async () => {
    const r = await generateText({ model: vercel("glm_task"), prompt: say({ text: "Four." }) });
    eq(r.text, "Four.", "text");
  },
  "vercel ai: streamText": async () => {
    const r = streamText({ model: vercel("claude_task"), prompt: say({ text: "x y z" }) });
    let text = ""; for await (const t of r.textStream) text += t;
    eq(text, "x y z", "text");
  },
  "vercel ai: chat completions provider": async () => {
    const r = await generateText({ model: vercel.chat("glm_task"), prompt: say({ text: "Five." }) });
    eq(r.text, "Five.", "text");
  },
  "vercel ai: generateObject": async () => {
    const r = await generateObject({ model: vercel("glm_task"), prompt: say({ text: '{"city":"Oslo","temp":3}' }),
      schema: jsonSchema({ type: "object", properties: { city: { type: "string" }, temp: { type: "number" } },
        required: ["city", "temp"], additionalProperties: false }) });
    eq(r.object, { city: "Oslo", temp: 3 }, "object");
  },
};

const results = {};
for (const [name, check] of Object.entries(checks)) {
  try { await check(); results[name] = "ok"; }
  catch (e) { results[name] = `${e?.constructor?.name ?? "Error"}: ${String(e?.message ?? e).slice(0, 300)}`; }
}
console.log(JSON.stringify(results, null, 1));
