// Benchmark plugin for Haraka: counts queued messages into $MQBENCH_COUNT_FILE.
// Runs before queue/discard and passes on (next()), so discard still accepts the message.
// The count is flushed on a timer rather than per message, to cost Haraka next to nothing.
'use strict'

const fs = require('fs')

let count = 0
let written = -1
const file = process.env.MQBENCH_COUNT_FILE

function flush() {
    if (!file || count === written) return
    written = count
    fs.writeFileSync(file + '.tmp', String(count))
    fs.renameSync(file + '.tmp', file)
}

exports.register = function () {
    this.register_hook('queue', 'count')
    setInterval(flush, 100).unref()
    process.on('exit', flush)
}

exports.count = function (next) {
    count += 1
    next()
}
