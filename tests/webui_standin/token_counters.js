// Stand-in of the host's prompt token counters (A1111 1.10.1 javascript/token-counters.js + onEdit of ui.js; Forge
// has the same): each counter element is moved over its prompt box, made visible with the
// "token-counter-visible" class, and an edit of the box clicks the hidden "<tab>_token_button" 800 ms later
// while the counter is visible; the button's python handler (host.update_token_counter) rewrites the counter.
// Written from the host's behaviour, not copied.
(function () {
    "use strict";
    const SETS = [
        ["txt2img_prompt", "txt2img_token_counter", "txt2img_token_button"],
        ["txt2img_neg_prompt", "txt2img_negative_token_counter", "txt2img_negative_token_button"],
        ["img2img_prompt", "img2img_token_counter", "img2img_token_button"],
        ["img2img_neg_prompt", "img2img_negative_token_counter", "img2img_negative_token_button"],
    ];
    const timers = {};

    function app() {
        const a = document.querySelector("gradio-app");
        return (a && a.shadowRoot) || document;
    }

    function setup(id, idCounter, idButton) {
        const prompt = app().getElementById(id);
        const counter = app().getElementById(idCounter);
        const textarea = app().querySelector("#" + id + " textarea");
        if (!prompt || !counter || !textarea) return false;
        if (counter.parentElement !== prompt.parentElement) {
            prompt.parentElement.insertBefore(counter, prompt);
            prompt.parentElement.style.position = "relative";
        }
        counter.style.display = "block";
        counter.classList.add("token-counter-visible");
        textarea.addEventListener("input", function () {
            clearTimeout(timers[id]);
            timers[id] = setTimeout(function () {
                if (counter.classList.contains("token-counter-visible")) app().getElementById(idButton)?.click();
            }, 800);
        });
        return true;
    }

    const pending = new Set(SETS.map((s) => s[0]));
    const wait = setInterval(function () {
        for (const s of SETS) if (pending.has(s[0]) && setup(...s)) pending.delete(s[0]);
        if (pending.size === 0 || !document.querySelector("gradio-app")) clearInterval(wait);
    }, 200);
})();
