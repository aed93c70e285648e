// The rechka browser client: microphone → AudioWorklet (16 kHz PCM16) → WebSocket /v1/stream → live captions.
//
// States: idle → starting → live → stopping → idle (or failed). Audio captured before the socket is open is
// queued and sent right after the start message, so nothing said at the first moment is lost. Stop flushes the
// worklet, sends {"type":"stop"} and waits for the server's "end" before closing.

import { mergedFinal, revisedFinals } from './revise.js';

const TARGET_RATE = 16000;
const CHUNK_MS = 100;
const PALETTE_SIZE = 8;

const CLOSE_REASONS = {
  1001: 'the server went away (restart or idle timeout)',
  1003: 'the server cannot use this audio',
  1008: 'the server rejected a message',
  1009: 'a message was too large for the server',
  1011: 'the server hit an internal error',
  1013: 'the server is overloaded; try again later',
};

const $ = (id) => document.getElementById(id);
const ui = {
  toggle: $('toggle'), token: $('token'), diarization: $('diarization'), state: $('state'), level: $('level'),
  sent: $('sent'), legend: $('legend'), error: $('error'), finals: $('finals'), partial: $('partial'),
  placeholder: $('placeholder'), endpoint: $('endpoint'),
};

let state = 'idle';
let session = null; // everything of the current stream

export function streamUrl(location, token) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = token ? `?token=${encodeURIComponent(token)}` : '';
  return `${scheme}//${location.host}/v1/stream${query}`;
}

function setState(next, text) {
  state = next;
  const css = { idle: 'idle', starting: 'connecting', live: 'live', stopping: 'live', failed: 'failed' }[next];
  ui.state.className = `state ${css}`;
  ui.state.textContent = text;
  ui.toggle.disabled = next === 'starting' || next === 'stopping';
  ui.toggle.textContent = next === 'live' || next === 'stopping' ? 'Stop' : 'Start';
  ui.toggle.classList.toggle('recording', next === 'live');
  ui.token.disabled = ui.diarization.disabled = next !== 'idle' && next !== 'failed';
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function clock(seconds) {
  const m = Math.floor(seconds / 60);
  const s = (seconds - 60 * m).toFixed(1).padStart(4, '0');
  return `${String(m).padStart(2, '0')}:${s}`;
}

function speakerColour(label) {
  const match = /^(?:S|ch)(\d+)$/.exec(label || '');
  const index = match ? Number(match[1]) - (label.startsWith('S') ? 1 : 0) : 0;
  return `var(--s${(((index % PALETTE_SIZE) + PALETTE_SIZE) % PALETTE_SIZE) + 1})`;
}

function noteSpeaker(label) {
  if (!label || session.speakers.has(label)) return;
  session.speakers.add(label);
  const item = document.createElement('li');
  item.textContent = label;
  item.style.background = speakerColour(label);
  ui.legend.append(item);
}

function renderPartial() {
  const parts = [...session.partials.values()].map((p) => (p.speaker ? `${p.speaker}: ` : '') + p.text);
  ui.partial.textContent = parts.join('  |  ');
}

function finalItem(event) {
  const item = document.createElement('li');
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = clock(event.start);
  const speaker = document.createElement('span');
  speaker.className = 'speaker';
  speaker.textContent = event.speaker || '';
  speaker.style.color = speakerColour(event.speaker);
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = event.text;
  text.style.color = event.speaker ? speakerColour(event.speaker) : '';
  item.append(time, speaker, text);
  return item;
}

function addFinal(event) {
  ui.placeholder.hidden = true;
  const item = finalItem(event);
  ui.finals.append(item);
  session.finals.set(`${event.channel}:${event.utterance_id}`, { event, shown: [event], items: [item] });
  item.scrollIntoView({ block: 'nearest' });
}

function reviseFinal(revision) {
  const entry = session.finals.get(`${revision.channel}:${revision.utterance_id}`);
  if (!entry) return; // an empty final, never shown
  showPieces(entry, revisedFinals(entry.event, revision));
  for (const w of revision.words || []) noteSpeaker(w.speaker);
  noteSpeaker(revision.speaker);
}

function showPieces(entry, pieces) {
  const items = pieces.map(finalItem);
  for (const item of items) item.classList.add('revised');
  entry.items[0].before(...items);
  for (const old of entry.items) old.remove();
  entry.shown = pieces;
  entry.items = items;
}

// One voice had two labels: every line (and the partial) of `from` is redrawn as `into`; `from` leaves the legend.
function mergeSpeakers(merge) {
  for (const entry of session.finals.values()) {
    const pieces = entry.shown.map((f) => mergedFinal(f, merge));
    entry.event = mergedFinal(entry.event, merge);
    if (pieces.some((f, i) => JSON.stringify(f) !== JSON.stringify(entry.shown[i]))) showPieces(entry, pieces);
  }
  for (const [channel, partial] of session.partials) session.partials.set(channel, mergedFinal(partial, merge));
  renderPartial();
  session.speakers.delete(merge.from);
  for (const item of [...ui.legend.children]) if (item.textContent === merge.from) item.remove();
  noteSpeaker(merge.into);
}

function onServerEvent(event) {
  switch (event.type) {
    case 'ready':
      session.ready = true;
      setState('live', `listening · session ${event.session_id.slice(0, 8)}`);
      break;
    case 'partial':
      session.partials.set(event.channel, event);
      noteSpeaker(event.speaker);
      renderPartial();
      break;
    case 'final': {
      const open = session.partials.get(event.channel);
      if (open && open.utterance_id === event.utterance_id) session.partials.delete(event.channel);
      renderPartial();
      for (const w of event.words || []) noteSpeaker(w.speaker);
      noteSpeaker(event.speaker);
      if (event.text.trim()) addFinal(event);
      break;
    }
    case 'speaker_revision':
      reviseFinal(event);
      break;
    case 'speaker_merge':
      mergeSpeakers(event);
      break;
    case 'speaker_turns':
      for (const turn of event.turns) noteSpeaker(turn.speaker);
      break;
    case 'warning':
      showError(`server warning (${event.code}): ${event.message}`);
      break;
    case 'error':
      session.error = `${event.code}: ${event.message}`;
      showError(`server error ${session.error}`);
      break;
    case 'end':
      session.ended = true;
      session.partials.clear();
      renderPartial();
      break;
    default:
      break; // newer servers may add events
  }
}

function sendAudio(pcm) {
  const ws = session && session.ws;
  if (ws && ws.readyState === WebSocket.OPEN && session.startSent) {
    ws.send(pcm);
    session.sentBytes += pcm.byteLength;
    ui.sent.textContent = `sent ${(session.sentBytes / 2 / TARGET_RATE).toFixed(1)} s`;
  } else if (session) {
    session.queue.push(pcm);
  }
}

async function openAudio() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
  });
  const context = new AudioContext();
  await context.audioWorklet.addModule('/static/pcm-worklet.js');
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, 'pcm16-writer', {
    numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { targetRate: TARGET_RATE, chunkMs: CHUNK_MS },
  });
  node.port.onmessage = ({ data }) => {
    if (data.type === 'audio') {
      ui.level.value = data.level;
      sendAudio(data.pcm);
    } else if (data.type === 'flushed') {
      finishSending();
    }
  };
  source.connect(node);
  return { stream, context, node, source };
}

function openSocket() {
  const ws = new WebSocket(streamUrl(window.location, ui.token.value.trim()));
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    ws.send(JSON.stringify({
      type: 'start', encoding: 'pcm_s16le', sample_rate: TARGET_RATE, channels: 1,
      diarization: ui.diarization.checked, interim_results: true, speaker_turns: false,
    }));
    session.startSent = true;
    const queued = session.queue.splice(0);
    queued.forEach(sendAudio);
    if (session.flushed) finishSending();
  };
  ws.onmessage = ({ data }) => {
    if (typeof data !== 'string') return;
    try {
      onServerEvent(JSON.parse(data));
    } catch (err) {
      showError(`unreadable server message: ${err.message}`);
    }
  };
  ws.onclose = (event) => onClosed(event);
  return ws;
}

function closeAudio() {
  if (!session || !session.audio) return;
  const { stream, context, source } = session.audio;
  stream.getTracks().forEach((t) => t.stop());
  source.disconnect();
  context.close();
  session.audio = null;
  ui.level.value = 0;
}

function onClosed(event) {
  const current = session;
  closeAudio();
  session = null;
  if (current.ended && (event.code === 1000 || event.code === 1005)) {
    setState('idle', 'done');
    return;
  }
  let message;
  if (!current.ready && event.code === 1006) {
    message = 'could not connect: the server refused the stream (wrong token?) or is busy; try again';
  } else if (CLOSE_REASONS[event.code]) {
    message = CLOSE_REASONS[event.code];
  } else {
    message = current.stopping ? 'the connection closed before the last finals' : 'the connection was lost';
  }
  const detail = event.reason || current.error;
  showError(`${message}${detail ? `: ${detail}` : ''} (close code ${event.code})`);
  setState('failed', 'disconnected');
}

function finishSending() {
  session.flushed = true;
  if (session.ws.readyState === WebSocket.OPEN && session.startSent) {
    session.ws.send(JSON.stringify({ type: 'stop' }));
    closeAudio();
  }
}

async function start() {
  showError('');
  session = {
    ws: null, audio: null, queue: [], partials: new Map(), finals: new Map(), speakers: new Set(), sentBytes: 0,
    startSent: false, ready: false, ended: false, stopping: false, flushed: false, error: '',
  };
  ui.legend.replaceChildren();
  setState('starting', 'starting microphone…');
  try {
    session.audio = await openAudio();
  } catch (err) {
    session = null;
    const reason = err && err.name === 'NotAllowedError' ? 'microphone permission was denied'
      : err && err.name === 'NotFoundError' ? 'no microphone was found' : `microphone failed: ${err}`;
    showError(reason);
    setState('failed', 'no microphone');
    return;
  }
  setState('starting', 'connecting…');
  session.ws = openSocket();
}

function stop() {
  if (!session) return;
  session.stopping = true;
  setState('stopping', 'finishing: waiting for the last finals…');
  if (session.audio) session.audio.node.port.postMessage('flush');
  else finishSending();
}

ui.toggle.addEventListener('click', () => (state === 'live' ? stop() : start()));
ui.endpoint.textContent = streamUrl(window.location, '').replace(/\?.*$/, '');
setState('idle', 'ready');
