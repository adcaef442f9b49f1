// Controls: microphone and camera toggles (track.enabled + `media_state`) and Leave.

export class Controls {
  /**
   * @param {HTMLElement} root  element holding #mic-btn, #cam-btn, #leave-btn
   * @param {import('./session.js').Session} session
   * @param {{onLeave?: () => void}} [opts]
   */
  constructor(root, session, { onLeave } = {}) {
    this.session = session;
    this.mic = root.querySelector('#mic-btn');
    this.cam = root.querySelector('#cam-btn');
    this.leaveBtn = root.querySelector('#leave-btn');
    const onMic = () => session.setAudioMuted(!session.audioMuted);
    const onCam = () => session.setVideoMuted(!session.videoMuted);
    const onLeaveClick = () => {
      session.leave();
      onLeave?.();
    };
    this.mic.addEventListener('click', onMic);
    this.cam.addEventListener('click', onCam);
    this.leaveBtn.addEventListener('click', onLeaveClick);
    const offs = [session.on('local-media', () => this.update()), session.on('state', () => this.update())];
    this._cleanup = () => {
      this.mic.removeEventListener('click', onMic);
      this.cam.removeEventListener('click', onCam);
      this.leaveBtn.removeEventListener('click', onLeaveClick);
      for (const off of offs) off();
    };
    this.update();
  }

  update() {
    const s = this.session;
    const over = s.state === 'left' || s.state === 'failed';
    const hasAudio = !!s.localStream?.getAudioTracks().length;
    const hasVideo = !!s.localStream?.getVideoTracks().length;
    setToggle(this.mic, s.audioMuted, hasAudio && !over, 'Unmute', 'Mute', 'microphone');
    setToggle(this.cam, s.videoMuted, hasVideo && !over, 'Start camera', 'Stop camera', 'camera');
    this.leaveBtn.disabled = over;
  }

  destroy() {
    this._cleanup();
  }
}

function setToggle(btn, off, enabled, offText, onText, what) {
  btn.dataset.off = String(off);
  btn.disabled = !enabled;
  btn.querySelector('.btn-text').textContent = off ? offText : onText;
  btn.setAttribute('aria-label', off ? `${offText} ${what}` : `${onText} ${what}`);
  btn.title = btn.getAttribute('aria-label');
}
