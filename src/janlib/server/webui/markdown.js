// Markdown → DOM nodes for model output. Every piece of model text becomes a text node (createTextNode or
// textContent), never parsed HTML, so no output can add an element, an attribute or a script. Links keep only
// http(s) and mailto targets. Covers what chat models write: fenced code, headings, lists, quotes, tables, rules,
// paragraphs, and inline code, bold, italic, strikethrough, links.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const LIST_ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(\s+|$)/;
const TABLE_DIVIDER = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;
const SAFE_LINK = /^(https?:|mailto:)/i;

// One alternative per inline construct; the first that matches at a position wins.
const INLINE = new RegExp([
  /\\([!-/:-@[-`{-~])/.source,                        // 1: backslash escape
  /(`+)([^`]|[^`][\s\S]*?[^`])\2(?!`)/.source,          // 2,3: code span
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source,                  // 4: bold
  /__(?=\S)([\s\S]*?\S)__(?!\w)/.source,                // 5: bold
  /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source,              // 6: italic
  /(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/.source,   // 7: italic
  /~~(?=\S)([\s\S]*?\S)~~/.source,                      // 8: strikethrough
  // 9,10: link, its URL may hold balanced parentheses; an image becomes a link
  /!?\[([^\]\n]+)\]\(\s*<?((?:[^\s()<>]|\([^\s()<>]*\))+)>?(?:\s+"[^"\n]*")?\s*\)/.source,
  /(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"*_~])/.source, // 11: bare URL
].join("|"), "g");

function element(tag, ...children) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

/** A link to url, or source as plain text where url is not http(s) or mailto (javascript:, data:, ...). */
function link(label, url, source) {
  if (!SAFE_LINK.test(url)) return document.createTextNode(source);
  const a = document.createElement("a");
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  appendInline(a, label);
  return a;
}

/** Append the inline Markdown of text to parent. */
function appendInline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[1] !== undefined) parent.append(m[1]);
    else if (m[3] !== undefined) parent.append(element("code", m[3].replace(/^ (.*) $/s, "$1")));
    else if (m[4] !== undefined || m[5] !== undefined) parent.append(inlineElement("strong", m[4] ?? m[5]));
    else if (m[6] !== undefined || m[7] !== undefined) parent.append(inlineElement("em", m[6] ?? m[7]));
    else if (m[8] !== undefined) parent.append(inlineElement("del", m[8]));
    else if (m[9] !== undefined) parent.append(link(m[9], m[10], m[0]));
    else parent.append(link(m[11], m[11], m[0]));
  }
  if (last < text.length) parent.append(text.slice(last));
}

function inlineElement(tag, text) {
  const node = document.createElement(tag);
  appendInline(node, text);
  return node;
}

/** A paragraph: its lines joined by line breaks (chat output means its newlines). */
function paragraph(lines) {
  const p = document.createElement("p");
  lines.forEach((line, i) => {
    if (i) p.append(document.createElement("br"));
    appendInline(p, line.trim());
  });
  return p;
}

function codeBlock(language, lines) {
  const code = element("code", lines.join("\n"));
  const pre = element("pre", code);
  if (language) {
    pre.dataset.language = language;
    code.className = "language-" + language.replace(/[^\w+#.-]/g, "");
  }
  const copy = element("button", "Copy");
  copy.type = "button";
  copy.className = "copy";
  copy.addEventListener("click", () => {
    navigator.clipboard?.writeText(code.textContent).then(() => { copy.textContent = "Copied"; });
  });
  return element("div", copy, pre);
}

function tableCells(line) {
  const cells = line.trim().replace(/^\|/, "").replace(/\|$/, "").split(/(?<!\\)\|/);
  return cells.map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function table(header, alignments, rows) {
  const aligns = tableCells(alignments).map((cell) =>
    cell.startsWith(":") && cell.endsWith(":") ? "center" : cell.endsWith(":") ? "right" : "");
  const row = (cells, tag) => element("tr", ...cells.map((cell, i) => {
    const td = inlineElement(tag, cell);
    if (aligns[i]) td.className = "align-" + aligns[i];
    return td;
  }));
  const head = tableCells(header);
  const body = rows.map((line) => tableCells(line).slice(0, head.length));
  return element("div", element("table", element("thead", row(head, "th")),
                                element("tbody", ...body.map((cells) => row(cells, "td")))));
}

function startsBlock(line, next) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    LIST_ITEM.test(line) || (line.includes("|") && next !== undefined && TABLE_DIVIDER.test(next));
}

/** The items of the list starting at lines[start]: [ordered, first number, items (lines each), next index]. */
function listItems(lines, start) {
  const first = lines[start].match(LIST_ITEM);
  const ordered = /\d/.test(first[2]);
  const items = [];
  let i = start;
  while (i < lines.length) {
    const m = lines[i].match(LIST_ITEM);
    if (!m || /\d/.test(m[2]) !== ordered) break;
    const indent = m[0].length;
    const item = [lines[i].slice(indent)];
    i++;
    while (i < lines.length) {
      const line = lines[i];
      if (/^\s*$/.test(line)) {  // a blank line continues the item only if indented text follows
        if (i + 1 < lines.length && /^\s{2,}\S/.test(lines[i + 1])) { item.push(""); i++; continue; }
        break;
      }
      if (/^\s{2,}\S/.test(line)) item.push(line.replace(new RegExp("^ {0," + indent + "}"), ""));
      else if (!startsBlock(line, lines[i + 1])) item.push(line);  // a lazy continuation of the text
      else break;
      i++;
    }
    items.push(item);
    if (i < lines.length && /^\s*$/.test(lines[i]) && lines[i + 1] && LIST_ITEM.test(lines[i + 1])) i++;
  }
  return [ordered, parseInt(first[2], 10), items, i];
}

/** Render Markdown source as a DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  appendBlocks(fragment, source.replace(/\r\n?/g, "\n").split("\n"));
  return fragment;
}

function appendBlocks(parent, lines) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (/^\s*$/.test(line)) {
      i++;
    } else if ((m = line.match(FENCE))) {
      const closing = new RegExp("^ {0,3}" + m[1][0] + "{" + m[1].length + ",}\\s*$");
      const body = [];
      for (i++; i < lines.length && !closing.test(lines[i]); i++) body.push(lines[i]);
      i++;  // the closing fence; a block still streaming has none yet
      parent.append(codeBlock(m[2], body));
    } else if ((m = line.match(HEADING))) {
      parent.append(inlineElement("h" + m[1].length, m[2]));
      i++;
    } else if (RULE.test(line)) {
      parent.append(document.createElement("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const quoted = [];
      for (; i < lines.length && QUOTE.test(lines[i]); i++) quoted.push(lines[i].replace(QUOTE, ""));
      const blockquote = document.createElement("blockquote");
      appendBlocks(blockquote, quoted);
      parent.append(blockquote);
    } else if (LIST_ITEM.test(line)) {
      const [ordered, start, items, next] = listItems(lines, i);
      const list = document.createElement(ordered ? "ol" : "ul");
      if (ordered && start !== 1) list.start = start;
      for (const item of items) {
        const li = document.createElement("li");
        appendBlocks(li, item);
        if (!item.includes("") && li.firstElementChild?.tagName === "P") {
          li.firstElementChild.replaceWith(...li.firstElementChild.childNodes);  // a tight item: no paragraph
        }
        list.append(li);
      }
      parent.append(list);
      i = next;
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_DIVIDER.test(lines[i + 1])) {
      const rows = [];
      let j = i + 2;
      for (; j < lines.length && lines[j].includes("|") && !/^\s*$/.test(lines[j]); j++) rows.push(lines[j]);
      parent.append(table(line, lines[i + 1], rows));
      i = j;
    } else {
      const text = [line];
      for (i++; i < lines.length && !/^\s*$/.test(lines[i]) && !startsBlock(lines[i], lines[i + 1]); i++) {
        text.push(lines[i]);
      }
      parent.append(paragraph(text));
    }
  }
}
