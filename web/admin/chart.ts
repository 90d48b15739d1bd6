// A small line chart on a canvas: enough for a live view of the last minutes, without a
// charting library in the bundle.

export interface Series {
  values: number[];
  color: string;
}

/** Draws `series` scaled to the largest value, with that value labelled at the top. */
export function drawChart(canvas: HTMLCanvasElement, series: Series[]) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext('2d');
  if (!g) return;
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const top = 16;
  const plot = height - top - 4;
  g.strokeStyle = '#dde1ea';
  g.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const y = top + plot * (1 - f) + 0.5;
    g.beginPath();
    g.moveTo(0, y);
    g.lineTo(width, y);
    g.stroke();
  }
  g.fillStyle = '#6b7385';
  g.font = '11px system-ui, sans-serif';
  g.fillText(new Intl.NumberFormat('en', { maximumFractionDigits: 1 }).format(max), 4, 11);
  for (const s of series) {
    const n = s.values.length;
    if (n < 2) continue;
    const step = width / (n - 1);
    g.strokeStyle = s.color;
    g.lineWidth = 1.5;
    g.beginPath();
    s.values.forEach((v, i) => {
      const x = i * step;
      const y = top + plot * (1 - v / max);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
}
