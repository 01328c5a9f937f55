package rng

// mt19937 is the 32-bit Mersenne Twister as PyTorch's CPU generator runs it
// (at::mt19937): the reference algorithm of Matsumoto and Nishimura.
type mt19937 struct {
	state [mtN]uint32
	next  int
}

const (
	mtN = 624
	mtM = 397
)

// seed initialises the state from the low 32 bits of the seed, as
// torch.manual_seed does for the CPU generator.
func (m *mt19937) seed(seed uint32) {
	m.state[0] = seed
	for i := 1; i < mtN; i++ {
		prev := m.state[i-1]
		m.state[i] = 1812433253*(prev^(prev>>30)) + uint32(i)
	}
	m.next = mtN
}

func (m *mt19937) twist() {
	for i := range mtN {
		y := m.state[i]&0x80000000 | m.state[(i+1)%mtN]&0x7fffffff
		v := m.state[(i+mtM)%mtN] ^ y>>1
		if y&1 != 0 {
			v ^= 0x9908b0df
		}
		m.state[i] = v
	}
	m.next = 0
}

// uint32 returns the next tempered output.
func (m *mt19937) uint32() uint32 {
	if m.next >= mtN {
		m.twist()
	}
	y := m.state[m.next]
	m.next++
	y ^= y >> 11
	y ^= y << 7 & 0x9d2c5680
	y ^= y << 15 & 0xefc60000
	y ^= y >> 18
	return y
}

// uint64 joins two outputs, the first as the high half (torch's random64).
func (m *mt19937) uint64() uint64 {
	hi := m.uint32()
	return uint64(hi)<<32 | uint64(m.uint32())
}
