// Taking the annotations out of the call: the study's annotations as the server's JSON
// export, and as DICOM Grayscale Softcopy Presentation States stored back into the study
// (docs/dicomweb.md, "Annotation export") and saved to disk, so a PACS or another viewer
// shows what the board drew. Both act on the study of the active viewport.

const ICON_JSON =
  '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 4v11M7 10l5 5 5-5M5 19h14"/></svg>';
const ICON_GSPS =
  '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 4h9l3 3v13H6zM9 13l2 2 4-4"/></svg>';

/** Saves `blob` as a file named `name` (the browser's download). */
export function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A UID as it may appear in a file name (digits and dots, as UIDs are). */
function fileUid(uid) {
  return String(uid).replace(/[^0-9.]/g, '');
}

export class AnnotationExport {
  /**
   * @param {import('../viewer/viewer.js').Viewer} viewer
   * @param {import('./layer.js').AnnotationLayer} layer
   * @param {{role: () => string|null}} opts
   */
  constructor(viewer, layer, { role }) {
    this.viewer = viewer;
    this.layer = layer;
    this.role = role;
    const group = viewer.toolbar.querySelector('[data-group="annotate"]');
    group.insertAdjacentHTML(
      'beforeend',
      `<button type="button" class="vw-btn vw-icon" data-action="export-json" title="Download this study's annotations (JSON)" aria-label="Download annotations as JSON">${ICON_JSON}</button>` +
        `<button type="button" class="vw-btn vw-icon" data-action="export-gsps" title="Save the annotations into the study as DICOM presentation states, and download them" aria-label="Save as DICOM presentation state">${ICON_GSPS}</button>`,
    );
    this.jsonBtn = group.querySelector('[data-action="export-json"]');
    this.gspsBtn = group.querySelector('[data-action="export-gsps"]');
    this.jsonBtn.addEventListener('click', () => this.downloadJson());
    this.gspsBtn.addEventListener('click', () => this.savePresentationStates());
    this.busy = false;
    this.refresh();
  }

  /** The study of the active viewport, or null. */
  get study() {
    return this.viewer.viewports[this.viewer.active]?.series?.study ?? null;
  }

  /** Enables what makes sense now: a study open, something drawn on it, not an observer. */
  refresh() {
    const study = this.study;
    const drawn = !!study && this.layer.list().some((a) => a.study === study && !a.pending);
    this.jsonBtn.disabled = this.busy || !study;
    this.gspsBtn.disabled = this.busy || !drawn || this.role() === 'observer';
  }

  async downloadJson() {
    const study = this.study;
    if (!study) return;
    try {
      const blob = await this.viewer.api.annotationsExport(study);
      saveBlob(blob, `annotations-${fileUid(study)}.json`);
    } catch (err) {
      this.viewer.toast(`Cannot export the annotations: ${err.message}`, { kind: 'error', ms: 8000 });
    }
  }

  async savePresentationStates() {
    const study = this.study;
    if (!study || this.busy) return;
    this.busy = true;
    this.refresh();
    try {
      const created = await this.viewer.api.savePresentationStates(study);
      for (const c of created) {
        const blob = await this.viewer.api.instanceBlob(c.url);
        saveBlob(blob, `GSPS-${fileUid(c.sopInstanceUID)}.dcm`);
      }
      const n = created.reduce((k, c) => k + (c.annotations ?? 0), 0);
      this.viewer.toast(
        `Saved ${created.length} presentation state${created.length === 1 ? '' : 's'} (${n} annotation${n === 1 ? '' : 's'}) into the study.`,
      );
      this.viewer.root.dataset.lastExport = JSON.stringify(created);
    } catch (err) {
      this.viewer.toast(`Cannot save the presentation state: ${err.message}`, { kind: 'error', ms: 8000 });
    } finally {
      this.busy = false;
      this.refresh();
    }
  }
}
