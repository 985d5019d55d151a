"use strict";
// Draws on the canvas with any pointer (mouse, pen, finger) and, each time a stroke ends, posts the canvas as a PNG
// to /guess and shows the answer. Strokes are dark ink on a transparent canvas: the server reads the alpha as ink.
const PEN_WIDTH = 18; // pixels of the 400-pixel canvas, however large it is shown
const canvas = document.getElementById("canvas");
const pen = canvas.getContext("2d");
const statusLine = document.getElementById("status");
const waiting = statusLine.textContent; // what the page says before a drawing, and after Clear
const top3 = document.getElementById("top");
let last = null; // the point the stroke being drawn reached; null between strokes
let strokes = 0; // strokes on the canvas
let clears = 0; // a guess asked before the last clear is not shown
let asking = false, askAgain = false;

pen.lineWidth = PEN_WIDTH;
pen.lineCap = pen.lineJoin = "round";
pen.strokeStyle = pen.fillStyle = "#111";

function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
}

function lineTo(point) {
  pen.beginPath();
  pen.moveTo(...last);
  pen.lineTo(...point);
  pen.stroke();
  last = point;
}

canvas.addEventListener("pointerdown", event => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  last = canvasPoint(event);
  pen.beginPath(); // a dot, if the pointer lifts where it went down (a line of no length draws nothing)
  pen.arc(...last, PEN_WIDTH / 2, 0, 2 * Math.PI);
  pen.fill();
});

canvas.addEventListener("pointermove", event => {
  if (last === null) return;
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const move of moves.length ? moves : [event]) lineTo(canvasPoint(move));
});

function endStroke() {
  if (last === null) return;
  last = null;
  strokes += 1;
  guess();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

// One request at a time; strokes that end meanwhile are guessed together once it returns.
function guess() {
  if (asking) { askAgain = true; return; }
  asking = true;
  const asked = { strokes, clears };
  canvas.toBlob(async png => {
    try {
      const response = await fetch("guess", { method: "POST", body: png, headers: { "Content-Type": "image/png" } });
      const answer = await response.json();
      if (!response.ok) throw new Error(answer.error || response.statusText);
      if (asked.clears === clears) show(answer.guesses, asked.strokes);
    } catch (error) {
      if (asked.clears === clears) statusLine.textContent = `No guess: ${error.message}`;
    } finally {
      asking = false;
      if (askAgain) { askAgain = false; if (strokes) guess(); }
    }
  }, "image/png");
}

function show(guesses, strokesSeen) {
  statusLine.textContent = guesses.length ? `Best guess: ${guesses[0].class}` : "";
  top3.replaceChildren(...guesses.map(({ class: name, probability }) => {
    const percent = `${Math.round(100 * probability)}%`;
    const item = element("li", "", "");
    const bar = element("span", "bar", "");
    bar.append(element("span", "", ""));
    bar.firstChild.style.width = percent;
    item.append(element("span", "name", name), bar, element("span", "percent", percent));
    item.title = `${name}: ${(100 * probability).toFixed(1)}%`;
    return item;
  }));
  document.body.dataset.guessedStrokes = strokesSeen;
}

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  made.textContent = text;
  return made;
}

document.getElementById("clear").addEventListener("click", () => {
  pen.clearRect(0, 0, canvas.width, canvas.height);
  strokes = 0;
  clears += 1;
  top3.replaceChildren();
  statusLine.textContent = waiting;
  document.body.dataset.guessedStrokes = 0;
});

fetch("model").then(response => response.json()).then(model => {
  document.getElementById("classes").replaceChildren(...model.classes.map(name => element("li", "", name)));
  const networks = model.members > 1 ? `an ensemble of ${model.members} networks` : "one network";
  document.getElementById("about").textContent =
    `The model: ${networks} from the search ${model.experiment}, right on ` +
    `${(100 * model.validation_accuracy).toFixed(1)}% of its validation drawings.`;
}).catch(error => { statusLine.textContent = `The model's classes could not be read: ${error.message}`; });
