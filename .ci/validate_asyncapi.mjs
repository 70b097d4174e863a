// Parses and validates the committed AsyncAPI document with the AsyncAPI project's own parser
// (schema validation plus its Spectral rules). Errors fail the run; warnings are printed.
// Usage: node validate_asyncapi.mjs PARSER_DIR DOCUMENT
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [parserDir, documentPath] = process.argv.slice(2);
const require = createRequire(path.resolve(parserDir, "package.json"));
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");

const { document, diagnostics } = await new Parser().parse(readFileSync(documentPath, "utf8"));
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
for (const d of diagnostics) {
  const where = d.path.join("/");
  const level = d.severity === DiagnosticSeverity.Error ? "error" : "note";
  console.log(`${level}: ${d.code}: ${d.message} (${where})`);
}
if (errors.length > 0 || document === undefined) {
  console.error(`AsyncAPI check failed: ${errors.length} error(s) in ${documentPath}`);
  process.exit(1);
}
const channels = document.channels().length;
const operations = document.operations().length;
const messages = document.components().messages().length;
console.log(
  `${documentPath}: valid AsyncAPI ${document.version()}; ${channels} channels, ${operations} operations, ${messages} messages`,
);
