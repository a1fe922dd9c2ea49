// llmcond: the LLM token counter and template insertion (A1111 / Forge / reForge).
// While llmcond is enabled on a tab, the host's own counter over each prompt box (#txt2img_token_counter,
// #txt2img_negative_token_counter, the same on img2img: modules/ui_toprow.py) shows the LLM count against the
// chosen adapter's budget, e.g. "LLM 300/512"; the accordion shows the full line ("612/512, 2 chunks", a cut
// warning). Counts come from POST /llmcond/v1/count (debounced). While llmcond is off nothing is polled and the
// host's counter shows its own CLIP count again.
(function () {
    "use strict";
    const API = "/llmcond/v1";
    const TABS = ["txt2img", "img2img"];
    // prompt box id -> the host's counter over it (javascript/token-counters.js of A1111 1.10 / Forge)
    const BOXES = [
        { box: "_prompt", counter: "_token_counter", positive: true },
        { box: "_neg_prompt", counter: "_negative_token_counter", positive: false },
    ];
    const DEBOUNCE_MS = 350;
    const POLL_MS = 400;
    const TAKEOVER = "llmcond-takeover";
    const OURS = "llmcond-host-counter";
    const last = {};
    const timers = {};

    function root() {
        if (typeof gradioApp === "function") return gradioApp();
        const app = document.querySelector("gradio-app");
        return (app && app.shadowRoot) || document;
    }
    function q(sel) { return root().querySelector(sel); }
    function promptBox(tab, box) { return q("#" + tab + (box || "_prompt") + " textarea"); }
    function valueOf(id) {
        const el = q("#" + id + " input, #" + id + " select, #" + id + " textarea");
        return el ? el.value : "";
    }
    function enabled(tab) {
        // A1111/Forge InputAccordion: the header box (inputAccordion.js) and its hidden gradio checkbox;
        // elsewhere our own "Enable" checkbox
        const id = tab + "_llmcond";
        const el = q("#" + id + "-visible-checkbox") || q("#" + id + "-checkbox input[type=checkbox]")
            || q("#" + id + "_enable input[type=checkbox]");
        return !!(el && el.checked);
    }
    function checked(id) {
        const el = q("#" + id + " input[type=checkbox]") || q("input#" + id + "[type=checkbox]");
        return !!(el && el.checked);
    }
    function escapeHtml(s) {
        return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
    }
    function notify(el) {
        if (typeof updateInput === "function") updateInput(el);
        else el.dispatchEvent(new Event("input", { bubbles: true }));
    }
    function addStyle() {
        if (document.getElementById("llmcond-style")) return;
        const style = document.createElement("style");
        style.id = "llmcond-style";
        // the host's own content stays in place (gradio keeps updating it) but is hidden while ours shows
        style.textContent = "." + TAKEOVER + " > :not(." + OURS + ") { display: none !important; }\n"
            + "." + TAKEOVER + " > ." + OURS + ".llmcond-warning { border-color: rgba(255,140,0,0.8) !important; }\n"
            + "." + TAKEOVER + " > ." + OURS + ".llmcond-error { border-color: rgba(255,0,0,0.5) !important; }";
        const r = root();
        (r === document ? document.head : r).appendChild(style);
    }

    function request(tab, box) {
        const el = promptBox(tab, box);
        const llm = valueOf(tab + "_llmcond_llm");
        if (!el || !llm) return null;
        return {
            text: el.value,
            llm: llm,
            adapter: valueOf(tab + "_llmcond_adapter") || "",
            emphasis: valueOf(tab + "_llmcond_emphasis") || "Follow WebUI",
            emphasis_syntax: valueOf(tab + "_llmcond_syntax") || "full",
            break_mode: (q("#" + tab + "_llmcond_break input:checked") || {}).value || "paragraphs",
            chunk: checked(tab + "_llmcond_chunk"),
            system_prompt: valueOf(tab + "_llmcond_system") || "Default",
        };
    }

    function showInAccordion(tab, html, cls) {
        // gradio 3 gives an HTML component's elem_id to its wrapper and to its content: write into the innermost
        const all = root().querySelectorAll("#" + tab + "_llmcond_counter");
        const el = all.length ? all[all.length - 1] : null;
        if (!el) return;
        el.innerHTML = html ? "<span class='llmcond-counter " + cls + "'>" + html + "</span>" : "";
    }

    function hostCounter(tab, spec) { return q("#" + tab + spec.counter); }

    function takeOver(tab, spec, text, title, cls) {
        const counter = hostCounter(tab, spec);
        if (!counter) return;
        addStyle();
        let mine = counter.querySelector(":scope > ." + OURS);
        if (!mine) {
            mine = document.createElement("span");
            counter.insertBefore(mine, counter.firstChild);
        }
        mine.className = OURS + " " + cls;
        mine.textContent = text;
        mine.title = title;
        counter.classList.add(TAKEOVER);
    }

    function restore(tab) {
        for (const spec of BOXES) {
            const counter = hostCounter(tab, spec);
            if (!counter || !counter.classList.contains(TAKEOVER)) continue;
            counter.classList.remove(TAKEOVER);
            const mine = counter.querySelector(":scope > ." + OURS);
            if (mine) mine.remove();
        }
    }

    function describe(data) {
        let text = data.tokens + "/" + data.budget;
        if (data.chunks > 1) text += ", " + data.chunks + " chunks";
        if (data.cut) {
            text += " \u2014 the tail will be cut at token " + data.cut.token_index + " near \u201c"
                + (data.cut.snippet || data.cut.word || "") + "\u201d";
        }
        return text;
    }

    async function count(tab, spec, body, key) {
        const slot = tab + spec.box;
        try {
            const r = await fetch(API + "/count", {
                method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
            });
            const data = await r.json();
            if (last[slot] !== key || !enabled(tab)) return; // a newer request is on its way, or llmcond is off
            if (!r.ok) {
                const msg = typeof data.detail === "string" ? data.detail : "cannot count tokens";
                if (spec.positive) showInAccordion(tab, escapeHtml(msg), "llmcond-error");
                takeOver(tab, spec, "LLM ?", msg, "llmcond-error");
                return;
            }
            const cls = data.cut ? "llmcond-warning" : "llmcond-ok";
            if (spec.positive) showInAccordion(tab, escapeHtml("LLM tokens: " + describe(data)), cls);
            let short = "LLM " + data.tokens + "/" + data.budget;
            if (data.chunks > 1) short += " \u00d7" + data.chunks;
            takeOver(tab, spec, short, "llmcond: " + describe(data), cls);
        } catch (e) {
            if (spec.positive) showInAccordion(tab, escapeHtml("token count unavailable: " + e), "llmcond-error");
        }
    }

    function poll() {
        for (const tab of TABS) {
            if (!enabled(tab)) { // off: no requests, the host's counter is its own again
                for (const spec of BOXES) last[tab + spec.box] = undefined;
                restore(tab);
                showInAccordion(tab, "", "");
                continue;
            }
            for (const spec of BOXES) {
                const body = request(tab, spec.box);
                if (!body) continue;
                const slot = tab + spec.box;
                const key = JSON.stringify(body);
                if (key === last[slot]) continue;
                last[slot] = key;
                clearTimeout(timers[slot]);
                timers[slot] = setTimeout(() => count(tab, spec, body, key), DEBOUNCE_MS);
            }
        }
    }

    window.llmcondInsertTemplate = async function (tab, name) {
        if (!name) return [];
        try {
            const r = await fetch(API + "/template", {
                method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: name }),
            });
            const data = await r.json();
            if (!r.ok) throw new Error(data.detail || r.statusText);
            const box = promptBox(tab);
            if (!box) return [];
            const start = box.selectionStart ?? box.value.length;
            const end = box.selectionEnd ?? box.value.length;
            const before = box.value.slice(0, start);
            const sep = before && !before.endsWith("\n") ? "\n" : "";
            box.value = before + sep + data.text + box.value.slice(end);
            notify(box);
        } catch (e) {
            showInAccordion(tab, escapeHtml("cannot insert template: " + e.message), "llmcond-error");
        }
        return [];
    };

    setInterval(poll, POLL_MS);
})();
