// A strict little parser for the Prometheus text exposition format
// (version 0.0.4), enough to check what Roost serves at /metrics: every
// line must be a comment (# HELP / # TYPE), blank, or a sample
// `name{label="value",...} number`, and every sample must belong to a
// family declared by a TYPE line before it. Throws on anything else.

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

/** Parses `text`; returns `{ families: Map<name, {type, help}>, samples: [{name, labels, value}] }`. */
export function parse(text) {
  const families = new Map();
  const samples = [];
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    if (line.trim() === "") return;
    if (line.startsWith("#")) {
      const match = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!match) return; // other comments are allowed
      const [, kind, name, rest] = match;
      if (!NAME.test(name)) throw new Error(`bad metric name, ${where}`);
      const family = families.get(name) ?? {};
      if (kind === "TYPE") {
        if (!TYPES.has(rest)) throw new Error(`unknown type, ${where}`);
        if (family.type) throw new Error(`second TYPE for ${name}, ${where}`);
        family.type = rest;
      } else {
        family.help = rest;
      }
      families.set(name, family);
      return;
    }
    const sample = parseSample(line, where);
    const family = familyOf(sample.name, families);
    if (!family) throw new Error(`sample without a TYPE line before it, ${where}`);
    samples.push({ ...sample, family: family.name, type: family.type });
  });
  return { families, samples };
}

function parseSample(line, where) {
  let i = 0;
  const nameEnd = line.search(/[{ ]/);
  if (nameEnd <= 0) throw new Error(`no metric name, ${where}`);
  const name = line.slice(0, nameEnd);
  if (!NAME.test(name)) throw new Error(`bad metric name, ${where}`);
  i = nameEnd;
  const labels = {};
  if (line[i] === "{") {
    i += 1;
    while (line[i] !== "}") {
      const eq = line.indexOf("=", i);
      if (eq < 0) throw new Error(`label without a value, ${where}`);
      const label = line.slice(i, eq);
      if (!LABEL.test(label)) throw new Error(`bad label name ${label}, ${where}`);
      if (line[eq + 1] !== '"') throw new Error(`unquoted label value, ${where}`);
      let j = eq + 2;
      let value = "";
      for (; j < line.length && line[j] !== '"'; j += 1) {
        if (line[j] === "\\") {
          j += 1;
          const escaped = { n: "\n", "\\": "\\", '"': '"' }[line[j]];
          if (escaped === undefined) throw new Error(`bad escape in a label value, ${where}`);
          value += escaped;
        } else {
          value += line[j];
        }
      }
      if (line[j] !== '"') throw new Error(`unterminated label value, ${where}`);
      if (label in labels) throw new Error(`label ${label} twice, ${where}`);
      labels[label] = value;
      i = j + 1;
      if (line[i] === ",") i += 1;
      else if (line[i] !== "}") throw new Error(`expected , or } after a label, ${where}`);
    }
    i += 1;
  }
  if (line[i] !== " ") throw new Error(`expected a space before the value, ${where}`);
  const fields = line.slice(i + 1).split(" ");
  if (fields.length > 2) throw new Error(`trailing text, ${where}`);
  const value = number(fields[0]);
  if (Number.isNaN(value) && fields[0] !== "NaN") throw new Error(`bad value, ${where}`);
  if (fields[1] !== undefined && !/^-?\d+$/.test(fields[1])) throw new Error(`bad timestamp, ${where}`);
  return { name, labels, value };
}

function number(text) {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text) && text !== "NaN") return NaN;
  return Number(text);
}

/** The declared family a sample name belongs to (`x_bucket` → histogram `x`, `x_total` → counter). */
function familyOf(name, families) {
  if (families.has(name)) return { name, ...families.get(name) };
  for (const suffix of ["_bucket", "_sum", "_count", "_total", "_created"]) {
    if (name.endsWith(suffix)) {
      const base = name.slice(0, -suffix.length);
      if (families.has(base)) return { name: base, ...families.get(base) };
    }
  }
  return null;
}

/** The value of the sample `name` whose labels include all of `labels`; throws if none. */
export function value({ samples }, name, labels = {}) {
  const found = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (found.length === 0) throw new Error(`no sample ${name}${JSON.stringify(labels)}`);
  return found.reduce((sum, s) => sum + s.value, 0);
}

/** Checks each histogram's buckets: cumulative, ending in +Inf equal to _count. */
export function checkHistograms({ samples, families }) {
  for (const [name, family] of families) {
    if (family.type !== "histogram") continue;
    const series = new Map();
    for (const s of samples.filter((s) => s.family === name)) {
      const { le, ...rest } = s.labels;
      const id = JSON.stringify(rest);
      const entry = series.get(id) ?? { buckets: [], count: null };
      if (s.name === `${name}_bucket`) entry.buckets.push([number(le), s.value]);
      if (s.name === `${name}_count`) entry.count = s.value;
      series.set(id, entry);
    }
    for (const [id, { buckets, count }] of series) {
      for (let i = 1; i < buckets.length; i += 1) {
        if (!(buckets[i][0] > buckets[i - 1][0])) throw new Error(`${name}${id}: buckets out of order`);
        if (buckets[i][1] < buckets[i - 1][1]) throw new Error(`${name}${id}: buckets not cumulative`);
      }
      const last = buckets.at(-1);
      if (!last || last[0] !== Infinity) throw new Error(`${name}${id}: no +Inf bucket`);
      if (last[1] !== count) throw new Error(`${name}${id}: +Inf bucket ${last[1]} != _count ${count}`);
    }
  }
}
