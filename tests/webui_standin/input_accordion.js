// Stand-in of the host's javascript/inputAccordion.js (A1111 1.10.1; Forge the same), written from its behaviour:
// each ".input-accordion" gets a visible checkbox "<id>-visible-checkbox" in its header; ticking it opens the
// accordion and sets the hidden gradio checkbox "<id>-checkbox" (the script arg); opening the accordion by its
// header ticks it too until the box is clicked directly.
(function () {
    "use strict";
    function app() {
        const a = document.querySelector("gradio-app");
        return (a && a.shadowRoot) || document;
    }
    function updateInput(el) {
        el.dispatchEvent(new Event("input", { bubbles: true }));
        el.dispatchEvent(new Event("change", { bubbles: true }));
    }
    window.inputAccordionChecked = function (id, checked) {
        const acc = app().getElementById(id);
        acc.visibleCheckbox.checked = checked;
        acc.onVisibleCheckboxChange();
    };
    function setup(acc) {
        const labelWrap = acc.querySelector(".label-wrap");
        const hidden = app().querySelector("#" + acc.id + "-checkbox input");
        if (!labelWrap || !hidden) return false;
        const span = labelWrap.querySelector("span");
        let linked = true;
        const isOpen = () => labelWrap.classList.contains("open");
        new MutationObserver(function () {
            if (linked) { acc.visibleCheckbox.checked = isOpen(); acc.onVisibleCheckboxChange(); }
        }).observe(labelWrap, { attributes: true, attributeFilter: ["class"] });
        const box = document.createElement("input");
        box.type = "checkbox";
        box.checked = isOpen();
        box.id = acc.id + "-visible-checkbox";
        box.className = hidden.className + " input-accordion-checkbox";
        span.insertBefore(box, span.firstChild);
        acc.visibleCheckbox = box;
        acc.onVisibleCheckboxChange = function () {
            if (linked && isOpen() !== box.checked) labelWrap.click();
            hidden.checked = box.checked;
            updateInput(hidden);
        };
        box.addEventListener("click", function (e) { linked = false; e.stopPropagation(); });
        box.addEventListener("input", acc.onVisibleCheckboxChange);
        return true;
    }
    const done = new Set();
    const wait = setInterval(function () {
        for (const acc of app().querySelectorAll(".input-accordion")) if (!done.has(acc) && setup(acc)) done.add(acc);
        if (done.size && done.size === app().querySelectorAll(".input-accordion").length) clearInterval(wait);
    }, 200);
})();
