/* batcher gallery: cards, filters, grid and (served by `batcher review`) review
 * controls, built from the JSON document embedded in the page. Works from
 * file:// with no network; text goes in with textContent, never as HTML. */
(function () {
  "use strict";

  var doc = JSON.parse(document.getElementById("batcher-data").textContent);
  var S = doc.s;
  var review = doc.review; // null on the static page
  var PAGE = doc.page_size || 60;
  var SETTINGS = { model: "model", resolution: "resolution", aspect_ratio: "aspect",
                   tool: "tool", image_count: "count", state: "state" };
  var VERDICT_NAMES = { pick: "picked", reject: "rejected" };

  function str(i) { return i === 0 || i === null || i === undefined ? null : S[i - 1]; }

  var items = doc.items.map(function (r) {
    var vars = {};
    var pairs = r[9] || [];
    for (var i = 0; i < pairs.length; i += 2) vars[str(pairs[i])] = str(pairs[i + 1]);
    var reviews = {};
    var given = r[15] || {};
    Object.keys(given).forEach(function (k) {
      reviews[k] = { verdict: given[k][0] === 1 ? "pick" : "reject", note: given[k][1] || null };
    });
    return {
      key: r[0], ordinal: r[1], state: str(r[2]), prompt: r[3], model: str(r[4]),
      resolution: str(r[5]), aspect: str(r[6]), tool: str(r[7]), count: r[8], vars: vars,
      project: r[10] || null, charged: r[11], refunded: r[12], reason: r[13] || null,
      files: (r[14] || []).map(function (f) {
        return { path: f[0], thumb: f[1] || null, w: f[2] || null, h: f[3] || null };
      }),
      reviews: reviews, redoOf: r[16] || null
    };
  });
  var byKey = {};
  var redoneBy = {};
  items.forEach(function (it) { byKey[it.key] = it; });
  items.forEach(function (it) { if (it.redoOf) redoneBy[it.redoOf] = it; });
  var varNames = doc.vars || [];

  var view = {
    states: {}, model: "", verdict: "", text: "", vars: {}, page: 0,
    mode: "cards", rows: doc.rows || "", cols: doc.cols || "", current: 0
  };

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) return;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.slice(0, 2) === "on") node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function encodePath(path) { return path.split("/").map(encodeURIComponent).join("/"); }

  function fileUrl(path) {
    var url;
    if (path.charAt(0) === "/") {
      if (review) return null; // the server serves only the batch's folder
      url = "file://" + encodePath(path);
    } else {
      url = (review ? review.files : doc.base) + encodePath(path);
    }
    if (review && review.token) url += "?token=" + encodeURIComponent(review.token);
    return url;
  }

  function thumbUrl(file) { return fileUrl(file.thumb ? ".thumbs/" + file.thumb : file.path); }

  function axisValue(it, axis) {
    if (!axis) return null;
    if (Object.prototype.hasOwnProperty.call(it.vars, axis)) return it.vars[axis];
    var field = SETTINGS[axis];
    if (!field) return null;
    var value = it[field];
    return value === null || value === undefined ? null : String(value);
  }

  function gridValue(it, axis) {
    var value = axisValue(it, axis);
    return value === null ? "(none)" : value;
  }

  function countBy(list, fn) {
    var counts = {}; var order = [];
    list.forEach(function (x) {
      var k = fn(x);
      if (k === null || k === undefined) return;
      if (!(k in counts)) { counts[k] = 0; order.push(k); }
      counts[k] += 1;
    });
    return { counts: counts, order: order };
  }

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  function setStatus(text, isError) {
    var node = document.getElementById("status");
    node.textContent = text;
    node.className = isError ? "error" : "";
  }

  // ------------------------------------------------------------------ filters

  function itemVerdicts(it) {
    return Object.keys(it.reviews).map(function (k) { return it.reviews[k].verdict; });
  }

  function matches(it) {
    var anyState = Object.keys(view.states).some(function (s) { return view.states[s]; });
    if (anyState && !view.states[it.state]) return false;
    if (view.model && it.model !== view.model) return false;
    for (var name in view.vars) {
      if (view.vars[name] && it.vars[name] !== view.vars[name]) return false;
    }
    if (view.verdict) {
      var verdicts = itemVerdicts(it);
      if (view.verdict === "none" ? verdicts.length > 0 : verdicts.indexOf(view.verdict) < 0) {
        return false;
      }
    }
    if (view.text && it.prompt.toLowerCase().indexOf(view.text) < 0 &&
        it.key.indexOf(view.text) < 0) return false;
    return true;
  }

  function filtered() { return items.filter(matches); }

  function select(id, label, options, value, onChange) {
    var node = el("select", { id: id, onchange: function () { onChange(node.value); } },
      options.map(function (o) {
        return el("option", { value: o[0], selected: o[0] === value, text: o[1] });
      }));
    return el("label", { "for": id }, [label + " ", node]);
  }

  function buildFilters() {
    var nav = document.getElementById("filters");
    nav.textContent = "";
    var states = countBy(items, function (it) { return it.state; });
    var stateBoxes = doc.states.map(function (state) {
      var n = states.counts[state] || 0;
      var box = el("input", {
        type: "checkbox", id: "filter-state-" + state, value: state,
        checked: !!view.states[state], disabled: n === 0,
        onchange: function () { view.states[state] = box.checked; refresh(true); }
      });
      return el("label", { "for": box.id }, [box, " " + state + " (" + n + ")"]);
    });
    nav.appendChild(el("fieldset", { id: "filter-states" },
      [el("legend", { text: "state" })].concat(stateBoxes)));

    var models = countBy(items, function (it) { return it.model; });
    nav.appendChild(select("filter-model", "model",
      [["", "all"]].concat(models.order.map(function (m) {
        return [m, m + " (" + models.counts[m] + ")"];
      })), view.model, function (v) { view.model = v; refresh(true); }));

    varNames.forEach(function (name) {
      var values = countBy(items, function (it) { return it.vars[name]; });
      nav.appendChild(select("filter-var-" + name, name,
        [["", "all"]].concat(values.order.map(function (v) {
          return [v, v + " (" + values.counts[v] + ")"];
        })), view.vars[name] || "", function (v) { view.vars[name] = v; refresh(true); }));
    });

    nav.appendChild(select("filter-review", "review",
      [["", "all"], ["pick", "picked"], ["reject", "rejected"], ["none", "not reviewed"]],
      view.verdict, function (v) { view.verdict = v; refresh(true); }));

    var search = el("input", {
      type: "search", id: "filter-text", placeholder: "prompt or key", value: view.text,
      oninput: function () { view.text = search.value.trim().toLowerCase(); refresh(true); }
    });
    nav.appendChild(el("label", { "for": "filter-text" }, ["search ", search]));

    var views = el("span", { class: "views" }, [
      el("button", { type: "button", id: "view-cards", "aria-pressed": String(view.mode === "cards"),
        text: "cards", onclick: function () { view.mode = "cards"; buildFilters(); refresh(false); } }),
      el("button", { type: "button", id: "view-grid", "aria-pressed": String(view.mode === "grid"),
        text: "grid", onclick: function () { view.mode = "grid"; buildFilters(); refresh(false); } })
    ]);
    nav.appendChild(views);
    if (review) {
      nav.appendChild(el("span", { class: "help" }, [
        el("kbd", { text: "j" }), "/", el("kbd", { text: "k" }), " or arrows move · ",
        el("kbd", { text: "p" }), " pick · ", el("kbd", { text: "x" }), " reject · ",
        el("kbd", { text: "u" }), " clear · ", el("kbd", { text: "f" }), " full size"
      ]));
    }
  }

  // ------------------------------------------------------------------ cards

  function verdictBadge(it, index) {
    var decision = it.reviews[index];
    if (!decision) return null;
    return el("span", { class: "verdict " + decision.verdict, text: VERDICT_NAMES[decision.verdict] });
  }

  function figure(it, index, file, tag, reviewable) {
    var url = thumbUrl(file);
    var img = url ? el("img", {
      class: "thumb", loading: "lazy", src: url, alt: it.prompt,
      width: file.w || null, height: file.h || null,
      onclick: function () { openViewer(it, index, file); }
    }) : el("div", { class: "noimage", text: "outside the batch folder" });
    var fig = el("figure", {
      class: reviewable ? "image" : "before", "data-image": reviewable ? String(index) : null
    }, [img, tag ? el("figcaption", { class: "tag", text: tag }) : null,
        reviewable ? verdictBadge(it, index) : null]);
    var decision = it.reviews[index];
    if (reviewable && decision && decision.note) {
      fig.appendChild(el("span", { class: "verdict-note", text: decision.note }));
    }
    if (review && reviewable) fig.appendChild(controls(it, index));
    return fig;
  }

  function controls(it, index) {
    var decision = it.reviews[index];
    var note = el("input", {
      type: "text", class: "note", placeholder: "note", maxlength: "2000",
      value: decision && decision.note ? decision.note : "", "aria-label": "note"
    });
    function button(verdict, label) {
      var on = decision && decision.verdict === verdict;
      return el("button", {
        type: "button", class: verdict + (on ? " on" : ""), "data-verdict": verdict, text: label,
        onclick: function () { decide(it, index, verdict, note.value); }
      });
    }
    return el("div", { class: "controls" },
      [button("pick", "pick"), button("reject", "reject"), button("clear", "clear"), note]);
  }

  function card(it) {
    var images = el("div", { class: "images" });
    var old = it.redoOf ? byKey[it.redoOf] : null;
    if (old) old.files.forEach(function (f, i) { images.appendChild(figure(old, i, f, "before", false)); });
    it.files.forEach(function (f, i) { images.appendChild(figure(it, i, f, old ? "after" : null, true)); });
    if (!it.files.length) {
      images.appendChild(el("div", { class: "noimage", text: it.state === "complete" ? "no image saved" : it.state }));
    }
    var settings = [it.model, it.resolution || "auto", it.aspect, it.tool, plural(it.count, "image")];
    var vars = Object.keys(it.vars).map(function (name) {
      return el("span", { class: "var", "data-var": name, text: name + ": " + it.vars[name] });
    });
    var credits = it.charged || it.refunded
      ? it.charged + " charged" + (it.refunded ? ", " + it.refunded + " refunded" : "") +
        " = " + (it.charged - it.refunded) + " credits"
      : "no credits";
    var redo = null;
    if (it.redoOf) redo = el("p", { class: "redo", text: "redoes " + it.redoOf });
    else if (redoneBy[it.key]) redo = el("p", { class: "redo", text: "redone by " + redoneBy[it.key].key });
    return el("article", { class: "card state-" + it.state, "data-key": it.key, "data-state": it.state }, [
      images,
      el("div", { class: "body" }, [
        el("p", { class: "prompt", text: it.prompt }),
        el("p", { class: "settings", text: settings.join(" · ") }),
        vars.length ? el("p", { class: "vars" }, vars) : null,
        el("p", { class: "meta" }, [
          el("span", { class: "badge " + it.state, text: it.state }), " ",
          el("span", { class: "credits", text: credits }), " ",
          it.project ? el("span", { class: "project", title: "project id", text: it.project }) : null,
          " ", el("span", { class: "key", title: "item key", text: "#" + it.key })
        ]),
        it.reason ? el("p", { class: "reason", text: it.reason }) : null,
        redo
      ])
    ]);
  }

  function pageCount(list) { return Math.max(1, Math.ceil(list.length / PAGE)); }

  function renderCards(list) {
    var pages = pageCount(list);
    if (view.page >= pages) view.page = pages - 1;
    var section = document.getElementById("cards");
    section.textContent = "";
    var fragment = document.createDocumentFragment();
    list.slice(view.page * PAGE, (view.page + 1) * PAGE).forEach(function (it) {
      fragment.appendChild(card(it));
    });
    section.appendChild(fragment);
    if (!list.length) section.appendChild(el("p", { class: "empty", text: "no item matches the filters" }));
    var pager = document.getElementById("pager");
    pager.textContent = "";
    pager.appendChild(el("button", { type: "button", id: "page-prev", disabled: view.page === 0,
      text: "previous", onclick: function () { goPage(view.page - 1, 0); } }));
    pager.appendChild(el("span", { id: "page-info",
      text: "page " + (view.page + 1) + " of " + pages + " · " + plural(list.length, "item") }));
    pager.appendChild(el("button", { type: "button", id: "page-next", disabled: view.page >= pages - 1,
      text: "next", onclick: function () { goPage(view.page + 1, 0); } }));
    markCurrent();
  }

  function goPage(page, current) {
    view.page = page;
    view.current = current;
    renderCards(filtered());
    window.scrollTo(0, 0);
  }

  // ------------------------------------------------------------------ grid

  function renderGrid(list) {
    var axes = document.getElementById("axes");
    axes.textContent = "";
    var choices = [["", "(none)"]].concat(varNames.map(function (n) { return [n, n]; }))
      .concat(Object.keys(SETTINGS).filter(function (n) { return varNames.indexOf(n) < 0; })
        .map(function (n) { return [n, n]; }));
    axes.appendChild(select("grid-rows", "rows", choices, view.rows,
      function (v) { view.rows = v; refresh(false); }));
    axes.appendChild(select("grid-cols", "columns", choices, view.cols,
      function (v) { view.cols = v; refresh(false); }));
    var wrap = document.getElementById("grid-wrap");
    wrap.textContent = "";
    if (!view.rows && !view.cols) {
      wrap.appendChild(el("p", { class: "empty", text: "choose the rows and columns of the grid" }));
      return;
    }
    var rows = view.rows ? countBy(items, function (it) { return gridValue(it, view.rows); }).order : [""];
    var cols = view.cols ? countBy(items, function (it) { return gridValue(it, view.cols); }).order : [""];
    var cells = {};
    list.forEach(function (it) {
      var key = (view.rows ? gridValue(it, view.rows) : "") + "\u0000" + (view.cols ? gridValue(it, view.cols) : "");
      (cells[key] = cells[key] || []).push(it);
    });
    var head = el("tr", null, [el("th", { text: (view.rows || "") + (view.cols ? " \\ " + view.cols : "") })]
      .concat(cols.map(function (c) { return el("th", { scope: "col", text: c || view.rows }); })));
    var body = rows.map(function (r) {
      return el("tr", null, [el("th", { scope: "row", text: r || view.cols })].concat(cols.map(function (c) {
        var found = cells[r + "\u0000" + c] || [];
        var cell = el("div", { class: "cell" });
        var shown = 0;
        found.forEach(function (it) {
          it.files.forEach(function (f, i) {
            if (shown >= 8) return;
            shown += 1;
            var url = thumbUrl(f);
            if (url) cell.appendChild(el("img", { class: "thumb", loading: "lazy", src: url,
              alt: it.prompt, title: it.prompt, "data-key": it.key,
              onclick: function () { openViewer(it, i, f); } }));
          });
        });
        var total = found.reduce(function (n, it) { return n + it.files.length; }, 0);
        if (total > shown) cell.appendChild(el("span", { class: "more", text: "+" + (total - shown) }));
        if (!found.length) cell.appendChild(el("span", { class: "empty", text: "–" }));
        else if (!total) cell.appendChild(el("span", { class: "empty", text: plural(found.length, "item") + ", no image" }));
        return el("td", { "data-row": r, "data-col": c, "data-items": String(found.length) }, [cell]);
      })));
    });
    wrap.appendChild(el("table", { class: "grid" }, [el("thead", null, [head]), el("tbody", null, body)]));
  }

  // ------------------------------------------------------------------ viewer

  function openViewer(it, index, file) {
    var url = fileUrl(file.path);
    if (!url) return;
    document.getElementById("viewer-image").src = url;
    document.getElementById("viewer-caption").textContent =
      it.prompt + " · image " + (index + 1) + " of " + it.count;
    document.getElementById("viewer").hidden = false;
  }

  function closeViewer() { document.getElementById("viewer").hidden = true; }

  document.getElementById("viewer").addEventListener("click", closeViewer);

  // ------------------------------------------------------------------ review

  function figures() { return Array.prototype.slice.call(document.querySelectorAll("#cards figure.image")); }

  function markCurrent() {
    var all = figures();
    if (!review || !all.length) return;
    if (view.current < 0) view.current = 0;
    if (view.current >= all.length) view.current = all.length - 1;
    all.forEach(function (f, i) { f.classList.toggle("current", i === view.current); });
  }

  function currentTarget() {
    var fig = figures()[view.current];
    if (!fig) return null;
    var it = byKey[fig.closest(".card").getAttribute("data-key")];
    return { it: it, index: Number(fig.getAttribute("data-image")), fig: fig };
  }

  function move(step) {
    var all = figures();
    var next = view.current + step;
    var list = filtered();
    if (next >= all.length && view.page < pageCount(list) - 1) return goPage(view.page + 1, 0);
    if (next < 0 && view.page > 0) return goPage(view.page - 1, PAGE * 16);
    view.current = Math.max(0, Math.min(all.length - 1, next));
    markCurrent();
    var fig = figures()[view.current];
    if (fig) fig.scrollIntoView({ block: "nearest" });
  }

  function decide(it, index, verdict, note) {
    var body = JSON.stringify({ key: it.key, image: index, verdict: verdict, note: note || null });
    var headers = { "Content-Type": "application/json" };
    if (review.token) headers["X-Batcher-Token"] = review.token;
    setStatus("saving…", false);
    return fetch(review.api + "reviews", { method: "POST", headers: headers, body: body,
      credentials: "same-origin" })
      .then(function (response) {
        return response.json().then(function (answer) {
          if (!response.ok) throw new Error(answer.message || ("HTTP " + response.status));
          return answer;
        });
      })
      .then(function (answer) {
        if (answer.review) it.reviews[index] = { verdict: answer.review.verdict, note: answer.review.note };
        else delete it.reviews[index];
        var keep = view.current;
        refresh(false);
        view.current = keep;
        markCurrent();
        setStatus(verdict === "clear" ? "cleared image " + (index + 1) + " of " + it.key
          : (VERDICT_NAMES[verdict] + " image " + (index + 1) + " of " + it.key), false);
      })
      .catch(function (error) { setStatus("not saved: " + error.message, true); });
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var tag = event.target && event.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    var viewer = document.getElementById("viewer");
    if (event.key === "Escape") { closeViewer(); return; }
    if (!review || view.mode !== "cards") return;
    var target;
    switch (event.key) {
      case "ArrowRight": case "ArrowDown": case "j": move(1); break;
      case "ArrowLeft": case "ArrowUp": case "k": move(-1); break;
      case "p": case "x": case "u":
        target = currentTarget();
        if (target) {
          var note = target.fig.querySelector("input.note");
          decide(target.it, target.index, { p: "pick", x: "reject", u: "clear" }[event.key],
            note ? note.value : null);
        }
        break;
      case "f":
        if (!viewer.hidden) { closeViewer(); break; }
        target = currentTarget();
        if (target) openViewer(target.it, target.index, target.it.files[target.index]);
        break;
      default: return;
    }
    event.preventDefault();
  });

  // ------------------------------------------------------------------ refresh

  function refresh(resetPage) {
    if (resetPage) { view.page = 0; view.current = 0; }
    var list = filtered();
    var cards = view.mode === "cards";
    document.getElementById("cards").hidden = !cards;
    document.getElementById("pager").hidden = !cards;
    document.getElementById("grid-view").hidden = cards;
    if (cards) renderCards(list); else renderGrid(list);
  }

  buildFilters();
  refresh(true);
  document.body.setAttribute("data-ready", "true");
}());
