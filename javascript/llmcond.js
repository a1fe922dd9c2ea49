// llmcond: live token counter for the LLM's budget and template insertion (A1111 / Forge / reForge).
// The counter asks POST /llmcond/v1/count (debounced) and shows e.g. "300/512", "612/512, 2 chunks" or a cut warning.
(function () {
    "use strict";
    const API = "/llmcond/v1";
    const TABS = ["txt2img", "img2img"];
    const DEBOUNCE_MS = 350;
    const POLL_MS = 400;
    const last = {};
    const timers = {};

    function root() {
        if (typeof gradioApp === "function") return gradioApp();
        const app = document.querySelector("gradio-app");
        return (app && app.shadowRoot) || document;
    }
    function q(sel) { return root().querySelector(sel); }
    function promptBox(tab) { return q("#" + tab + "_prompt textarea"); }
    function valueOf(id) {
        const el = q("#" + id + " input, #" + id + " select, #" + id + " textarea");
        return el ? el.value : "";
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

    function request(tab) {
        const box = promptBox(tab);
        const llm = valueOf(tab + "_llmcond_llm");
        if (!box || !llm) return null;
        return {
            text: box.value,
            llm: llm,
            emphasis: valueOf(tab + "_llmcond_emphasis") || "Follow WebUI",
            break_mode: (q("#" + tab + "_llmcond_break input:checked") || {}).value || "paragraphs",
            chunk: checked(tab + "_llmcond_chunk"),
            system_prompt: valueOf(tab + "_llmcond_system") || "Default",
        };
    }

    function show(tab, html, cls) {
        // gradio 3 gives an HTML component's elem_id to its wrapper and to its content: write into the innermost
        const all = root().querySelectorAll("#" + tab + "_llmcond_counter");
        const el = all.length ? all[all.length - 1] : null;
        if (!el) return;
        el.innerHTML = "<span class='llmcond-counter " + cls + "'>" + html + "</span>";
    }

    async function count(tab, body, key) {
        try {
            const r = await fetch(API + "/count", {
                method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
            });
            const data = await r.json();
            if (last[tab] !== key) return; // a newer request is on its way
            if (!r.ok) { show(tab, escapeHtml(typeof data.detail === "string" ? data.detail : "cannot count tokens"), "llmcond-error"); return; }
            let text = "LLM tokens: " + data.tokens + "/" + data.budget;
            if (data.chunks > 1) text += ", " + data.chunks + " chunks";
            let cls = "llmcond-ok";
            if (data.cut) {
                cls = "llmcond-warning";
                text += " \u2014 the tail will be cut at token " + data.cut.token_index + " near \u201c" + (data.cut.snippet || data.cut.word || "") + "\u201d";
            }
            show(tab, escapeHtml(text), cls);
        } catch (e) {
            show(tab, escapeHtml("token count unavailable: " + e), "llmcond-error");
        }
    }

    function poll() {
        for (const tab of TABS) {
            const body = request(tab);
            if (!body) continue;
            const key = JSON.stringify(body);
            if (key === last[tab]) continue;
            last[tab] = key;
            clearTimeout(timers[tab]);
            timers[tab] = setTimeout(() => count(tab, body, key), DEBOUNCE_MS);
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
            show(tab, escapeHtml("cannot insert template: " + e.message), "llmcond-error");
        }
        return [];
    };

    setInterval(poll, POLL_MS);
})();
