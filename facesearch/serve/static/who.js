// "Who is this?": post the chosen photo to /api/v1/recognize (the login cookie authenticates, the page's CSRF
// token goes along), then draw each face's box and name on a canvas and list the top identities. Plain JS, no
// build step; names are set as text, never as HTML.
(function () {
  const csrf = { "X-CSRF-Token": document.querySelector("meta[name=csrf-token]").content };
  const input = document.getElementById("photo"), drop = document.getElementById("drop");
  const canvas = document.getElementById("canvas"), list = document.getElementById("faces");
  const status = document.getElementById("status"), topK = document.getElementById("top-k");
  const explainButton = document.getElementById("explain"), assignForm = document.getElementById("assign");
  let current = null;

  function colour(face) { return face.identity === "unknown" ? "#e33" : "#2c2"; }

  function draw(image, result) {
    // drawn at the width it is shown (at most 800 px): on a phone the labels keep their size instead of shrinking
    // with a canvas the browser scales down
    const room = Math.max(200, Math.min(800, canvas.parentElement.clientWidth));
    const scale = Math.min(1, room / image.naturalWidth);
    canvas.width = Math.round(image.naturalWidth * scale);
    canvas.height = Math.round(image.naturalHeight * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    ctx.lineWidth = 3; ctx.font = "16px system-ui, sans-serif";
    result.faces.forEach(function (face, i) {
      const [x1, y1, x2, y2] = face.box.map(function (v) { return v * scale; });
      ctx.strokeStyle = colour(face); ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const label = (i + 1) + ". " + face.identity, wide = ctx.measureText(label).width + 8;
      const x = Math.max(0, Math.min(x1, canvas.width - wide));  // kept inside the photo's right edge
      ctx.fillStyle = "rgba(0,0,0,.65)"; ctx.fillRect(x, Math.max(0, y1 - 22), wide, 22);
      ctx.fillStyle = "#fff"; ctx.fillText(label, x + 4, Math.max(16, y1 - 6));
    });
  }

  function listFaces(result) {
    list.replaceChildren();
    result.faces.forEach(function (face) {
      const item = document.createElement("li");
      const name = document.createElement("b");
      name.className = "face-name" + (face.identity === "unknown" ? " unknown" : "");
      name.textContent = face.identity;
      item.appendChild(name);
      const best = face.similarity === null ? "empty gallery" : "best " + face.similarity.toFixed(3);
      item.appendChild(document.createTextNode(" (" + best + "; detector " + face.det_prob.toFixed(3) + ")"));
      const matches = document.createElement("ul");
      face.matches.forEach(function (m) {
        const li = document.createElement("li");
        const a = document.createElement("a");
        a.href = "/subjects/" + encodeURIComponent(m.name); a.textContent = m.name;
        li.appendChild(a); li.appendChild(document.createTextNode(" " + m.similarity.toFixed(3)));
        matches.appendChild(li);
      });
      item.appendChild(matches);
      if (assignForm) item.appendChild(assigner(face));
      list.appendChild(item);
    });
  }

  // A face answered here, enrolled as a person of the gallery or a new one (writers only: the page has the form)
  function assigner(face) {
    const form = assignForm.content.firstElementChild.cloneNode(true);
    const said = form.querySelector(".said");
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const body = new FormData(form);
      body.append("photo", current); body.append("box", face.box.join(","));
      said.textContent = "enrolling..."; said.className = "said";
      const response = await fetch("/who/faces", { method: "POST", body: body, credentials: "same-origin",
                                                   headers: csrf });
      const answer = await response.json();
      if (!response.ok) { said.textContent = "Refused: " + answer.error.reason; said.className = "said error"; return; }
      said.textContent = answer.message + " ";
      said.className = "said message";
      const link = document.createElement("a");
      link.href = answer.subject_url; link.textContent = "see " + answer.subject;
      said.appendChild(link);
      addPerson(answer.subject);
    });
    return form;
  }

  function addPerson(name) {  // a new person joins every list of the page (and the forms still to come)
    const lists = [...document.querySelectorAll("select[name=person]"),
                   ...assignForm.content.querySelectorAll("select[name=person]")];
    lists.forEach(function (select) {
      if ([...select.options].some(function (o) { return o.value === name; })) return;
      const option = document.createElement("option"); option.textContent = name; select.appendChild(option);
    });
  }

  function answered(result, file, note) {
    const n = result.faces.length;
    status.textContent = n + " face" + (n === 1 ? "" : "s") + " in " + file.name + " (" +
      result.timings_ms.total.toFixed(0) + " ms, threshold " + result.threshold.toFixed(3) + ")" + note;
    status.dataset.done = "1";
    explainButton.disabled = n === 0;
  }

  async function recognize(file) {
    current = file; explainButton.disabled = true; delete status.dataset.done;
    status.textContent = "Looking for faces in " + file.name + "...";
    const body = new FormData(); body.append("photo", file);
    const response = await fetch("/api/v1/recognize?top_k=" + encodeURIComponent(topK.value || 3),
                                 { method: "POST", body: body, credentials: "same-origin", headers: csrf });
    const result = await response.json();
    if (!response.ok) { status.textContent = "Refused: " + result.error.reason; list.replaceChildren(); return; }
    const image = new Image(), url = URL.createObjectURL(file);
    image.onload = function () { URL.revokeObjectURL(url); draw(image, result); listFaces(result); answered(result, file, ""); };
    image.onerror = function () {  // a format the server reads and this browser cannot draw (TIFF in Chromium)
      URL.revokeObjectURL(url); canvas.width = 0; canvas.height = 0; listFaces(result);
      answered(result, file, "; this browser cannot show the photo's format, so its boxes are not drawn");
    };
    image.src = url;
  }

  async function explain() {
    if (!current) return;
    explainButton.disabled = true;
    status.textContent = "Explaining the largest face (a few seconds)...";
    const body = new FormData(); body.append("photo", current);
    const response = await fetch("/api/v1/explain", { method: "POST", body: body, credentials: "same-origin",
                                                    headers: csrf });
    const result = await response.json();
    if (!response.ok) { status.textContent = "Cannot explain: " + result.error.reason; explainButton.disabled = false; return; }
    window.location.href = result.report_url;
  }

  input.addEventListener("change", function () { if (input.files.length) recognize(input.files[0]); });
  explainButton.addEventListener("click", explain);
  drop.addEventListener("dragover", function (e) { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
  drop.addEventListener("drop", function (e) {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) recognize(e.dataTransfer.files[0]);
  });
})();
